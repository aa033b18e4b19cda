"""ml_collections config files, loaded the same way by main.py, the demo and the tests."""
from __future__ import annotations

import importlib.util
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


def flags_parser(prog: str):
    """absl's flag parsing for a command (`app.run(main, flags_parser=...)`): a bad flag, config
    file or `--config.key=value` prints `PROG: bad config: ...` and exits with status 2."""

    def parse(argv):
        from absl import flags

        try:
            return flags.FLAGS(argv)
        except (flags.Error, KeyError, TypeError, ValueError, AttributeError) as e:
            print(f"{prog}: bad config: {e}", file=sys.stderr)
            sys.exit(2)

    return parse
