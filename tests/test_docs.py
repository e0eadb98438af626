"""The Markdown files render as written: code fences open and close on lines of their own,
and every relative link or image resolves to a file of the repository."""

import glob
import os
import re

import pytest

from conftest import ROOT

DOCS = sorted(os.path.relpath(p, ROOT) for p in
              glob.glob(os.path.join(ROOT, "*.md")) + glob.glob(os.path.join(ROOT, "*", "*.md")))


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
        path = os.path.join(ROOT, os.path.dirname(doc), target.split("#")[0])
        assert os.path.exists(path), f"{doc}: the link {target!r} leads nowhere"


def test_the_checks_catch_what_they_look_for():
    assert fence_problems("```bash\nx\n``` The\nmore\n") == [
        "line 3: text after a closing fence: '``` The'"]
    assert fence_problems("```\nx\n") == ["line 1: a fence never closed"]
    assert fence_problems("```bash\nx\n```\n") == []
