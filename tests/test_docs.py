"""The Markdown files render as written: code fences open and close on lines of their own,
every relative link or image resolves to a file of the repository (and a heading, where it
names one), and every section cited by name exists; the README stays short; and the
module map of docs/architecture.md is the one the code follows."""

import ast
import glob
import os
import re

import pytest

from conftest import ROOT

DOCS = sorted(os.path.relpath(p, ROOT) for p in
              glob.glob(os.path.join(ROOT, "*.md")) + glob.glob(os.path.join(ROOT, "*", "*.md"))
              + glob.glob(os.path.join(ROOT, "reproduce", "*", "*.md")))


# A named section of a page, as code, configs and pages cite it: docs/gpus.md, "Title".
SECTION_REF = re.compile(r'(README|docs/[\w-]+\.md|bench/RESULTS\.md)(?:\.md)?, "([^"]+)"')


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def headings(path):
    found, fenced = [], False
    for line in read(path).splitlines():
        fenced ^= line.lstrip().startswith("```")
        if not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip())
    return found


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def fence_problems(text):
    """Lines where a fence is malformed: text after a closing fence (which turns what
    follows into code), or a fence left open at the end."""
    problems, open_at = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.lstrip().startswith("```"):
            continue
        rest = line.lstrip()[3:]
        if open_at is None:
            if " " in rest.strip():
                problems.append(f"line {number}: an opening fence with text after it: {line!r}")
            open_at = number
        else:
            if rest.strip():
                problems.append(f"line {number}: text after a closing fence: {line!r}")
            open_at = None
    if open_at is not None:
        problems.append(f"line {open_at}: a fence never closed")
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_fences_are_balanced_and_links_resolve(doc):
    text = open(os.path.join(ROOT, doc)).read()
    assert fence_problems(text) == []
    prose = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code are not links
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        path = os.path.join(ROOT, os.path.dirname(doc), file) if file else os.path.join(ROOT, doc)
        assert os.path.exists(path), f"{doc}: the link {target!r} leads nowhere"
        if anchor:
            assert anchor in [slug(h) for h in headings(path)], (
                f"{doc}: the link {target!r} names no heading of {file or doc}")


def test_the_checks_catch_what_they_look_for():
    assert fence_problems("```bash\nx\n``` The\nmore\n") == [
        "line 3: text after a closing fence: '``` The'"]
    assert fence_problems("```\nx\n") == ["line 1: a fence never closed"]
    assert fence_problems("```bash\nx\n```\n") == []


def test_the_readme_is_short():
    assert len(read(os.path.join(ROOT, "README.md")).splitlines()) <= 180
    for home in ("bench", "reproduce", os.path.join("reproduce", "gpu")):  # a screen each
        assert len(read(os.path.join(ROOT, home, "README.md")).splitlines()) <= 60, home


def repository_files(skip, suffixes):
    """The repository's files whose names end with one of ``suffixes``, outside the
    folders named in ``skip`` and hidden folders (virtual environments, the GPU carry)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in (
            "__pycache__", "node_modules", *skip)]
        found += [os.path.join(folder, f) for f in files if f.endswith(suffixes)]
    return found


def python_files():
    """Every Python file of the repository outside tests/."""
    return repository_files(("tests",), (".py",))


def test_the_readme_layout_is_the_tree():
    """Each entry of the README's layout block is there, and every folder at the top of
    the repository (but the git-ignored ones) has its entry."""
    text = read(os.path.join(ROOT, "README.md"))
    block = text[text.index("## Layout"):].split("```")[1]
    named = [line.split()[0] for line in block.splitlines()[1:] if line and not line[0].isspace()]
    assert named, block
    missing = [name for name in named if not os.path.exists(os.path.join(ROOT, name))]
    assert not missing, f"the README's layout names what is not there: {missing}"
    ignored = {"runs", "report", "data", "wheelhouse"}
    tops = {f"{d}/" for d in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, d))
            and not d.startswith((".", "_")) and d not in ignored and not d.endswith(".egg-info")}
    assert not tops - set(named), f"folders missing from the README's layout: {tops - set(named)}"


def test_every_cited_section_exists():
    """Messages, comments, configs and pages cite sections as ``docs/x.md, "Title"``."""
    files = ([os.path.join(ROOT, d) for d in DOCS]
             + glob.glob(os.path.join(ROOT, "cmxl_keras", "*.py"))
             + glob.glob(os.path.join(ROOT, "configs", "**", "*.toml"), recursive=True)
             + python_files())
    cited = 0
    for path in files:
        for page, title in SECTION_REF.findall(read(path)):
            page = "README.md" if page == "README" else page
            title = " ".join(title.split())  # a citation wrapped across lines
            assert title in headings(os.path.join(ROOT, page)), (path, page, title)
            cited += 1
    assert cited >= 3


MODULES = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "cmxl_keras", "*.py"))}


def module_layers():
    """docs/architecture.md's table: module -> layer."""
    layers, layer = {}, None
    for line in read(os.path.join(ROOT, "docs", "architecture.md")).splitlines():
        match = re.match(r"\| (\d+)?[^|]*\| `(\w+)\.py` \|", line)
        if match:
            layer = int(match.group(1)) if match.group(1) else layer
            layers[match.group(2)] = layer
    return layers


def imports(path):
    """One file's syntax tree, and (module, name) of each of its ``cmxl_keras`` imports
    (name None for a module imported whole)."""
    tree = ast.parse(read(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "cmxl_keras"):
            for alias in node.names:
                if node.module == "cmxl_keras":
                    found.append((alias.name, None))
                else:
                    found.append((node.module.split(".")[1], alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], None) for a in node.names
                      if a.name.startswith("cmxl_keras.")]
    return tree, found


def test_each_module_imports_only_its_layer_and_below():
    layers = module_layers()
    assert set(layers) == MODULES - {"__init__"}, "docs/architecture.md lists every module"
    upward = []
    for module in sorted(set(layers)):
        _, found = imports(os.path.join(ROOT, "cmxl_keras", f"{module}.py"))
        upward += [(module, other) for other, _ in found
                   if other in layers and layers[other] > layers[module]]
    assert not upward, upward


def test_running_a_model_imports_neither_the_exporter_nor_training():
    """docs/architecture.md's rule, read from its text: the running modules' imports,
    followed through every module they reach, never reach the exporter's or training's."""
    text = " ".join(read(os.path.join(ROOT, "docs", "architecture.md")).split())
    rule = text[text.index("Running a model stands on its own"):]
    rule = rule[:rule.index("checks that too")]
    running = re.findall(r"`(\w+)\.py`", rule[:rule.index("import, directly")])
    forbidden = re.findall(r"`(\w+)\.py`", rule[rule.index("none of the"):
                                              rule.index("what both sides need")])
    assert "inference" in running and {"export", "recipe"} <= set(forbidden), (running,
                                                                            forbidden)

    def reached(module, seen):
        for other, _ in imports(os.path.join(ROOT, "cmxl_keras", f"{module}.py"))[1]:
            if other in MODULES and other not in seen:
                seen.add(other)
                reached(other, seen)
        return seen

    crossing = {m: sorted(reached(m, set()) & set(forbidden)) for m in running}
    assert not any(crossing.values()), crossing


def test_every_module_stays_small():
    """Every Python file outside tests/ (the package, the benchmarks, the reproduction, the
    GPU queue): at most 350 lines each."""
    sizes = {os.path.relpath(path, ROOT): len(read(path).splitlines())
             for path in python_files()}
    assert {"reproduce/gpu/run.py", "bench/bench_train.py", "cli.py"} <= set(sizes), sizes
    assert len(sizes) > len(MODULES) + 25, sizes
    assert not {module: n for module, n in sizes.items() if n > 350}, sizes


def homes():
    """docs/architecture.md's table of homes: folder -> the top-level packages its files
    may import (``cmxl_keras``, ``reproduce``, ``bench``), and which ``reproduce`` modules
    where the row names them."""
    found = {}
    for line in read(os.path.join(ROOT, "docs", "architecture.md")).splitlines():
        match = re.match(r"\| `([\w/]+)/` \|[^|]*\|[^|]*\| (.+) \|$", line)
        if match:
            allowed = re.findall(r"`(\w+)`", match.group(2))
            found[match.group(1)] = set(allowed)
    return found


def test_each_home_imports_only_what_its_row_allows():
    """bench/, reproduce/, reproduce/gpu/ and the library import across homes only as
    docs/architecture.md's table of homes says (bench/ takes the reference's network
    only), and none imports another home's script by its bare name."""
    table = homes()
    assert set(table) == {"cmxl_keras", "bench", "reproduce", "reproduce/gpu"}, table
    scripts = {os.path.basename(p)[:-3]: "bench" for p in glob.glob(
        os.path.join(ROOT, "bench", "*.py"))}
    crossing = []
    for path in python_files():
        rel = os.path.relpath(path, ROOT)
        home = max((h for h in table if rel.startswith(h + "/")), key=len, default=None)
        if home is None:
            continue
        for node in ast.walk(ast.parse(read(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.module
                     and not node.level else [])
            for name in names:
                top = name.split(".")[0]
                if top in ("cmxl_keras", "reproduce") and top not in table[home]:
                    crossing.append((rel, name))
                elif scripts.get(top) == "bench" and home != "bench":
                    crossing.append((rel, name))
                elif home == "bench" and top == "reproduce":
                    taken = [a.name for a in node.names] if isinstance(
                        node, ast.ImportFrom) else [name.split(".")[-1]]
                    crossing += [(rel, f"{name}.{t}") for t in taken
                                 if t not in table[home]]
    assert not crossing, crossing


def test_no_private_name_crosses_a_module_boundary():
    crossing = []
    for path in glob.glob(os.path.join(ROOT, "cmxl_keras", "*.py")) + [
            os.path.join(ROOT, "cli.py")]:
        tree, found = imports(path)
        crossing += [(path, f"{m}.{name}") for m, name in found
                     if name and name.startswith("_") and not name.startswith("__")]
        crossing += [(path, f"{node.value.id}.{node.attr}") for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in MODULES and node.attr.startswith("_")
                     and not node.attr.startswith("__")]
    assert not crossing, crossing


def _literal(text):
    """A default as docs/configuration.md writes it (`gelu`, "", true, 0.75) -> a value."""
    text = text.strip().strip("`")
    if text in ('""', "''"):
        return ""
    if text in ("true", "false"):
        return text == "true"
    try:
        return float(text)
    except ValueError:
        return text


def test_the_configuration_page_lists_every_config_field_with_its_default():
    """docs/configuration.md's table against ``Config`` itself: every field a row, no row
    without a field, and each default as the dataclass has it (a row of several keys
    lists their defaults in order, or one value and "each")."""
    import dataclasses

    from cmxl_keras.config import Config

    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    documented = {}
    for line in read(os.path.join(ROOT, "docs", "configuration.md")).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        keys = re.findall(r"`(\w+)`", cells[0]) if len(cells) >= 3 else []
        if not keys or cells[0] == "key":
            continue
        values = cells[1].split(", ")
        if cells[1].endswith(" each"):
            values = [cells[1][:-len(" each")]] * len(keys)
        for key, value in zip(keys, values if len(values) == len(keys) else [None] * len(keys)):
            documented[key] = value
    assert set(documented) == set(defaults), set(documented) ^ set(defaults)
    # `name`'s default is written as the rule that names a run ("from the architecture").
    for key, value in documented.items():
        if key != "name":
            assert value is not None, key
            expected = defaults[key]
            expected = float(expected) if isinstance(expected, (int, float)) and not isinstance(
                expected, bool) else expected
            assert _literal(value) == expected, (key, value, defaults[key])


def test_the_exit_code_table_is_the_code_the_cli_uses():
    """docs/troubleshooting.md's exit codes are 0 and errors.EXIT_CODES' codes, and
    ``--help`` names each of them."""
    from cmxl_keras import cli, errors

    page = read(os.path.join(ROOT, "docs", "troubleshooting.md"))
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", page, re.M)}
    assert documented == {0} | {code for _, code in errors.EXIT_CODES}, documented
    epilog = " ".join(cli.EXIT_CODES_HELP.split())
    assert all(re.search(rf"\b{code} ", epilog) for code in documented), epilog


# What each exit code's row in docs/troubleshooting.md and its words in ``--help`` must
# say: the meaning of the error class that gives the code.
EXIT_MEANINGS = {"TimeLimitReached": ("--time-limit", "--time-limit"),
                 "TrainingInterrupted": ("interrupted", "interrupted"),
                 "DataError": ("dataset", "data"),
                 "TrainingDiverged": ("diverged", "diverged"),
                 "ParityMiss": ("parity", "parity"),
                 "RunInUse": ("in use", "in use"),
                 "CmxlError": ("bad flag", "bad flag")}


def test_each_exit_code_means_its_error_class():
    """Each error class, raised inside a real click command wrapped as the CLI wraps its
    commands, exits with its code; that code's row in the docs and its words in
    ``--help`` say what the class means (a swapped pair of codes fails here)."""
    import click
    from click.testing import CliRunner

    from cmxl_keras import cli, errors

    page = read(os.path.join(ROOT, "docs", "troubleshooting.md"))
    rows = dict(re.findall(r"^\| (\d+) \| (.*) \|$", page, re.M))
    epilog = " ".join(cli.EXIT_CODES_HELP.split())
    assert {kind.__name__ for kind, _ in errors.EXIT_CODES} == set(EXIT_MEANINGS)
    for kind, code in errors.EXIT_CODES:
        @click.command()
        @cli.user_errors
        def fails():
            raise kind("the message")

        result = CliRunner().invoke(fails, [])
        assert result.exit_code == code, (kind.__name__, result.exit_code)
        assert "the message" in result.output
        in_docs, in_help = EXIT_MEANINGS[kind.__name__]
        assert in_docs in rows[str(code)], (kind.__name__, code, rows[str(code)])
        said = re.search(rf"\b{code} ([^;.]*)", epilog).group(1)
        assert in_help in said, (kind.__name__, code, said)


# The paths of the files that moved out of bench/ (bench/README.md, reproduce/README.md):
# a page, message or comment still naming one sends its reader nowhere.
MOVED = re.compile(r"bench/(equivalence|ref_train|ref_torch|table1|gpu_\w+|runner)\.py")


def test_no_text_names_a_file_where_it_no_longer_is():
    """Every page, module, test and config names the homes' files where they are; the
    records under results/ keep the commands as they were typed when they ran."""
    stale = []
    for path in repository_files(("results",), (".py", ".md", ".toml", ".txt", ".cfg",
                                                ".ini", ".gitignore")):
        stale += [(os.path.relpath(path, ROOT), m.group(0))
                  for m in MOVED.finditer(read(path))]
    stale = [s for s in stale if s[0] != "tests/test_docs.py"]  # this test's own pattern
    assert not stale, stale


def test_each_command_of_the_reproduction_answers_help():
    """``python -m reproduce`` and each of its subcommands print their help (the README's
    table of commands and reproduce/README.md name them)."""
    from conftest import run_reproduce
    from reproduce.cli import cli

    top = run_reproduce("--help", timeout=120)
    assert top.returncode == 0, top.stderr[-2000:]
    listed = read(os.path.join(ROOT, "reproduce", "README.md"))
    for name, command in cli.commands.items():
        assert f"| `{name}" in listed, f"reproduce/README.md does not list {name}"
        assert name in top.stdout
        result = run_reproduce(name, "--help", timeout=120)
        assert result.returncode == 0 and "Usage: python -m reproduce " + name in result.stdout, (
            name, result.stderr[-2000:])
