"""Peak memory of each side on a CPU: each runs alone in a subprocess (`train_step.py --only jax`
or `--only torch`), its peak resident set (Linux VmHWM, reset through /proc/self/clear_refs after
the models are built) during two steps."""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys

from bench.jax_side import JaxSide
from bench.step_shapes import bench_pixels, make_setup, shape_of
from bench.torch_side import TorchSide

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _vm(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def _release_freed_memory():
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def memory_child(args) -> dict:
    """One side alone: resident bytes before the steps and peak resident bytes during two steps
    (compile included for JAX: XLA's compile is part of what a run holds)."""
    shape = shape_of(args)
    setup = make_setup(shape, args.variants, "cpu")
    side = JaxSide(setup) if args.only == "jax" else TorchSide(setup)
    if args.only == "jax":  # the transformers copies served the conversion only
        setup.hf_cap = setup.hf_itm = setup.clip = None
    pixels = bench_pixels(shape)
    batch = side.batch(pixels)
    _release_freed_memory()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    before = _vm("VmRSS")
    for _ in range(2):
        side.step(batch)
    return dict(rss_before_steps=before, peak_rss=_vm("VmHWM"), shape=_overridable(shape))


def _overridable(shape: dict) -> dict:
    """The part of a shape the command line can change: the parent checks its child ran that."""
    return {key: shape[key] for key in ("batch", "micro_batches", "new_tokens", "remat")}


def child_command(args, side: str) -> list[str]:
    """train_step.py's command line for one side alone, with the parent's shape overrides."""
    cmd = [sys.executable, os.path.join(HERE, "train_step.py"), "--only", side, "--variants", args.variants,
           "--shapes", args.shapes, "--threads", str(args.threads), "--remat", getattr(args, "remat", "auto")]
    for key in ("batch", "micro_batches", "new_tokens"):
        if getattr(args, key, 0):
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    return cmd


def memory_per_side(args) -> dict:
    """{side: memory_child's dict, or {"error": its stderr}} for "jax" and "torch", one subprocess each."""
    out = {}
    expected = _overridable(shape_of(args))
    for side in ("jax", "torch"):
        proc = subprocess.run(child_command(args, side), capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        out[side] = json.loads(lines[-1]) if proc.returncode == 0 and lines else dict(error=proc.stderr[-2000:])
        if out[side].get("shape", expected) != expected:
            raise RuntimeError(f"the {side} memory run used {out[side]['shape']}, not the timed shape {expected}")
    return out

