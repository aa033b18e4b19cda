"""ml_collections config files, loaded the same way by main.py, the demo and the tests."""
from __future__ import annotations

import importlib.util
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
