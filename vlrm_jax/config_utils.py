"""ml_collections config files, loaded the same way by main.py, the demo and the tests."""
from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # the repository's configs/


def config_path(name_or_path: str | Path) -> Path:
    """A file path as it is; a bare name ("shapes") is a file of configs/."""
    path = Path(name_or_path)
    return path if path.suffix == ".py" or path.is_file() else CONFIG_DIR / f"{path}.py"


def load_config(name_or_path: str | Path, variant: str = ""):
    """`get_config(variant)` of a config file (see config_path)."""
    path = config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def apply_slice(c, variant: str, slices: dict) -> None:
    """Set a run config's mesh and micro-batch count for a named slice (`--config=FILE.py:v5e-64`);
    slices: name -> (data, fsdp, tensor, micro_batches). "" leaves the config as it is."""
    if not variant:
        return
    if variant not in slices:
        raise ValueError(f"unknown slice {variant!r}; this config was compiled for {sorted(slices)}")
    data, fsdp, tensor, micro_batches = slices[variant]
    c.mesh.update(dict(data=data, fsdp=fsdp, tensor=tensor))
    c.a2c.micro_batches = micro_batches


def flags_parser(prog: str, config_flag: str = "config"):
    """absl's flag parsing for a command (`app.run(main, flags_parser=...)`): a bad flag, config
    file or `--config.key=value` prints `PROG: bad config: ...` and exits with status 2; a key the
    config lacks is named by its dotted path with the closest existing keys."""

    def parse(argv):
        from absl import flags

        try:
            return flags.FLAGS(argv)
        except (flags.Error, KeyError, TypeError, ValueError, AttributeError) as e:
            # ml_collections reports a missing key as a bare KeyError of one path part
            print(f"{prog}: bad config: {unknown_key_message(argv, config_flag) or e}", file=sys.stderr)
            sys.exit(2)

    return parse


def unknown_key_message(argv: list[str], config_flag: str = "config", flag_values=None) -> str | None:
    """`unknown config key 'a.b'; closest: ...` for the first `--CONFIG_FLAG.a.b` override of argv
    that names no key of the config; None when every override names one (or the config file
    itself does not load: absl's message says why). flag_values: where the config flag is
    defined (absl's global FLAGS by default)."""
    from absl import flags

    config = _loaded_config(argv, config_flag, flags.FLAGS if flag_values is None else flag_values)
    if config is None:
        return None
    for path in _override_paths(argv, config_flag):
        if not _has_key(config, path):
            return f"unknown config key {path!r}; {_suggestions(config, path)}"
    return None


def _loaded_config(argv: list[str], config_flag: str, flag_values):
    """The config that `--CONFIG_FLAG=FILE[:variant]` of argv names, loaded by the flag's own
    parser; None when absent or when it does not load."""
    try:
        argv = flag_values.read_flags_from_files(argv, force_gnu=False)  # as config_flags reads argv
        source = _flag_argument(argv, config_flag)
        return None if source is None else flag_values[config_flag].parser.parse(source)
    except Exception:  # noqa: BLE001 - a file that does not load is the error absl already names
        return None


def _flag_argument(argv: list[str], name: str) -> str | None:
    """The value of the last `--NAME=VALUE` or `--NAME VALUE` of argv."""
    value = None
    for i, arg in enumerate(argv):
        match = re.fullmatch(rf"-{{1,2}}{re.escape(name)}(=(.*))?", arg)
        if match and match.group(1):
            value = match.group(2)
        elif match and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _override_paths(argv: list[str], name: str) -> list[str]:
    """The dotted paths of the `--NAME.a.b=VALUE` (or `--noNAME.a.b`) overrides, in order."""
    pattern = re.compile(rf"-{{1,2}}(?:no)?{re.escape(name)}\.([^=]+)")
    return [match.group(1) for match in map(pattern.match, argv) if match]


def _has_key(config, path: str) -> bool:
    node = config
    for part in path.split("."):
        if not _is_section(node) or part not in node:
            return False
        node = node[part]
    return True


def _is_section(value) -> bool:
    from ml_collections import ConfigDict

    return isinstance(value, (dict, ConfigDict))


def flatten(config, prefix: str = "") -> dict:
    """{dotted path: value} of every leaf of a nested config (a ConfigDict or its JSON dict),
    sorted by path: `a2c.learning_rate`, ... An empty section is a leaf."""
    flat = {}
    for name, value in sorted(config.items()):
        path = f"{prefix}{name}"
        flat.update(flatten(value, f"{path}.") if _is_section(value) and len(value) else {path: value})
    return flat


def _suggestions(config, path: str) -> str:
    """The closest existing keys; when none is close, the keys of the deepest section the path reaches."""
    closest = difflib.get_close_matches(path, list(flatten(config)), n=3, cutoff=0.5)
    if closest:
        return "closest: " + ", ".join(closest)
    node, reached = config, []
    for part in path.split(".")[:-1]:
        if part not in node or not _is_section(node[part]):
            break
        node, reached = node[part], reached + [part]
    where = f"keys of {'.'.join(reached)}" if reached else "top-level keys"
    return f"nothing close; {where}: " + ", ".join(sorted(node))
