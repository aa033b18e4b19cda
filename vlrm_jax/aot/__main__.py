"""Compile a run config for a TPU slice on this machine, no TPU needed, and say whether it fits:

    python -m vlrm_jax.aot --config=configs/vlrm.py --topology=v5e:8x8 [--layers N] [--json FILE]
        [--noeval | --notrain] [--dump DIR] [--config.key=value ...]

The same config flags and checks as main.py, the same step builder (from shapes: converted
folders' config.json where they exist, the released checkpoints' shapes elsewhere). It compiles
the whole training step and the evaluation's beam search with libtpu, and prints per-chip memory
against the chip's HBM, FLOPs, HBM bytes and collectives per step counted through the loops, and
a roofline bound on the step. Exit status: 0 fits, 1 does not fit (the overshoot is printed), 2 a
bad config or topology. A full-size compile takes minutes and several GiB of host memory.
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only TPU devices; nothing runs here
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vlrm_jax.config_utils import flags_parser  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file (configs/*.py)", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU target as libtpu names it, e.g. v5e:8x8, v4:2x4x4, v5p:2x4x4")
_LAYERS = flags.DEFINE_integer("layers", None, "cut every tower to this many layers (released widths kept)")
_JSON = flags.DEFINE_string("json", None, "also write the report as JSON to this file")
_EVAL = flags.DEFINE_bool("eval", True, "compile the evaluation's beam search as well")
_TRAIN = flags.DEFINE_bool("train", True, "compile the training step (--notrain: the beam search alone)")
_DUMP = flags.DEFINE_string("dump", None, "write each compiled program's optimised HLO text into this folder")


def main(argv) -> None:
    from vlrm_jax.aot import compile as aot_compile
    from vlrm_jax.aot import topology
    from vlrm_jax.rl.run import ConfigError

    logging.set_verbosity(logging.WARNING)
    cfg = _CONFIG.value
    if cfg is None or not _TOPOLOGY.value:
        print("vlrm_jax.aot: --config and --topology are required", file=sys.stderr)
        sys.exit(2)
    try:
        target = topology.parse(_TOPOLOGY.value)
        devices = topology.devices(target)
        report = aot_compile.compile_config(cfg, target, devices, layers=_LAYERS.value, evaluate=_EVAL.value,
                                            config_name=flags.FLAGS["config"].config_filename,
                                            progress=lambda m: print(m, flush=True), dump=_DUMP.value,
                                            train=_TRAIN.value)
    except ConfigError as e:
        print(f"vlrm_jax.aot: bad config: {e}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, RuntimeError) as e:
        print(f"vlrm_jax.aot: {e}", file=sys.stderr)
        sys.exit(2)
    print(aot_compile.format_report(report))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report.to_dict(), f, indent=1)
    sys.exit(0 if report.fits() else 1)


if __name__ == "__main__":
    app.run(main, flags_parser=flags_parser("vlrm_jax.aot"))
