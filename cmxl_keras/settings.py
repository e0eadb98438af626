"""Where a config comes from: a config file (a path, or a name looked up in ``configs/``),
the command line over it (flags, then ``--set key=value``), or a run folder's saved
config. ``config.py`` defines the config itself and checks it.
"""

import json
import os
import tomllib

from cmxl_keras import config
from cmxl_keras.errors import ConfigError, RunError


_PACKAGE = os.path.dirname(os.path.abspath(__file__))
# The shipped configs: configs/ of a clone, or cmxl_keras/configs/ where ``pip install .``
# put them (pyproject.toml maps the one onto the other).
CONFIG_DIR = next((folder for folder in (os.path.join(os.path.dirname(_PACKAGE), "configs"),
                                         os.path.join(_PACKAGE, "configs"))
                   if os.path.isdir(folder)), os.path.join(_PACKAGE, "configs"))


def config_dirs():
    """Where a config name is looked up, first match wins: ``configs/`` of the working
    directory (the folder users edit), then the shipped configs."""
    here = os.path.abspath("configs")
    return [here] + [CONFIG_DIR] if os.path.isdir(here) and here != CONFIG_DIR else [CONFIG_DIR]


def resolve_path(name_or_path):
    """A config file path from a path or a name (``smoke`` -> configs/smoke.toml, looked
    up in ``config_dirs()``)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    folders = config_dirs()
    for folder in folders:
        candidate = os.path.join(folder, f"{name_or_path}.toml")
        if os.path.isfile(candidate):
            return candidate
    names = sorted({f[:-5] for folder in folders for f in os.listdir(folder)
                    if f.endswith(".toml")})
    raise ConfigError(
        f"config file {name_or_path!r} not found. Give a path to a .toml file or one "
        f"of the names in {' or '.join(folders)}: {', '.join(names)}.")


def load(name_or_path, base=None):
    """Reads a TOML config file (or a configs/ name) over ``base`` (default: the paper)."""
    path, data = read_toml(name_or_path)
    return config.merge(base or config.Config(), data, source=f"config file {path!r}")


def read_toml(name_or_path):
    """``(path, {key: value})`` of a config file, checked to be flat and non-empty."""
    path = resolve_path(name_or_path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            f"config file {path!r} is not valid TOML ({error}). Each line must read "
            f"key = value, for example depth = 8.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {path!r} cannot be read ({error}).") from None
    if not data:
        raise ConfigError(
            f"config file {path!r} is empty: it holds no key = value lines. Add the "
            f"settings that differ from the paper's recipe, e.g. name = \"my_run\".")
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(
                f"config file {path!r} has a [{key}] table; configs are flat "
                f"key = value lines. Allowed keys: {', '.join(config.FIELDS)}.")
    return path, data


def command_line_changes(overrides=(), **flags):
    """The flags given (not None), then the ``--set key=value`` overrides over them, as
    one dict of typed values (unchecked: ``merge`` checks them)."""
    changes = {key: value for key, value in flags.items() if value is not None}
    changes.update(config.parse_override(text) for text in overrides)
    return changes


def resolve(config_file=None, overrides=(), base=None, **flags):
    """The CLI's view: base (defaults) <- config file <- flags (not None) <- ``--set``.

    A run that nothing names (no ``name`` in the config file, no ``--name``, not a
    resumed run) is named after its architecture (``architecture_name``).
    """
    cfg, named = base or config.Config(), base is not None
    if config_file:
        path, data = read_toml(config_file)
        cfg = config.merge(cfg, data, source=f"config file {path!r}")
        named = named or "name" in data
    changes = command_line_changes(overrides, **flags)
    cfg = config.merge(cfg, changes, source="the command line")
    if not (named or "name" in changes):
        cfg = cfg.replace(name=config.architecture_name(cfg))
    return cfg


def load_saved(run_dir):
    """A run folder's config: config.json, or config.toml when config.json is damaged
    (both are written at every start and resume)."""
    problems = []
    json_path = os.path.join(run_dir, "config.json")
    try:
        with open(json_path) as f:
            return config.from_dict(json.load(f), source=json_path)
    except (OSError, ValueError, TypeError, AttributeError) as error:  # ConfigError: ValueError
        problems.append(f"config.json: {type(error).__name__}: {error}")
    toml_path = os.path.join(run_dir, "config.toml")
    try:
        return load(toml_path, base=config.Config())
    except (OSError, ValueError) as error:
        problems.append(f"config.toml: {error}")
    raise RunError(
        f"{run_dir!r}: the run's saved config cannot be read ({'; '.join(problems)}). Without "
        f"it the checkpoint's model and schedule are unknown. Restore config.json or "
        f"config.toml from a copy of the run folder, or start a new run.")


__all__ = ["command_line_changes", "config_dirs", "load", "load_saved", "read_toml",
           "resolve", "resolve_path"]
