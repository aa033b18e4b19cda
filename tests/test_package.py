"""`import vlrm_jax` alone gives what the README uses: the model classes and every subpackage as an
attribute (loaded on first use, so the bare import pulls in no jax)."""
import subprocess
import sys
from pathlib import Path

import vlrm_jax
from tests.helpers import REPO


def test_every_public_module_is_an_attribute_of_the_package():
    root = Path(vlrm_jax.__file__).parent
    found = {p.stem for p in root.glob("*.py")} | {p.parent.name for p in root.glob("*/*.py")}  # rl/ has no __init__
    found = {name for name in found if not name.startswith("_")}
    assert found - {"assets", "checkpoint", "config_utils", "ops", "sharing"} == set(vlrm_jax._SUBMODULES)
    assert set(vlrm_jax._SUBMODULES) <= set(dir(vlrm_jax))


def test_bare_import_is_light_and_submodules_load_on_use():
    code = ("import sys, vlrm_jax; assert 'jax' not in sys.modules; "
            "mesh = vlrm_jax.sharding.make_mesh(); print(dict(mesh.shape)); "
            "print(vlrm_jax.eval.clip_recall.__name__, vlrm_jax.data.preprocess.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "clip_recall vlrm_jax.data.preprocess" in proc.stdout


def test_an_installed_copy_has_every_package():
    """setup.py's find_packages lists folders with an __init__.py only: one without it would be
    missing from `pip install .[tpu]` (not editable) on a pod, though every test here passes."""
    from setuptools import find_packages

    root = Path(REPO)
    folders = {str(p.parent.relative_to(root)).replace("/", ".") for p in root.glob("vlrm_jax/**/*.py")}
    folders |= {str(p.parent.relative_to(root)).replace("/", ".") for p in root.glob("convert/**/*.py")}
    assert folders <= set(find_packages(str(root), include=["vlrm_jax*", "convert*"]))
