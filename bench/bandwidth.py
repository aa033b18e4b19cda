"""The two bounds of one decode step, and the machine description, for generate_vs_hf.py.

A decode step must read every weight of the language model and the KV cache at least once per
token: `bound_ms_per_token` is that traffic over the measured copy bandwidth, the time a step
could not beat with all arithmetic free. It must also do the model's arithmetic:
`compute_ms_per_token` is its FLOPs over the best measured matrix-product rate, the time it
could not beat with memory free. Small batches are bound by the first, many decoded rows over a
large vocabulary by the second; the larger of the two is the step's roofline.
"""
from __future__ import annotations

import datetime
import os
import platform
import time

import numpy as np


def _best_seconds(run, tries: int) -> float:
    """The shortest of `tries` timed calls of `run` (after one untimed call: compile, warm-up)."""
    run()
    best = float("inf")
    for _ in range(tries):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
    return best


def copy_bandwidth(mb: int = 512, tries: int = 3) -> float:
    """Host memory bandwidth in bytes/s: best of `tries` numpy copies of an `mb` MB float32 array,
    counting the bytes read and written (2x the array)."""
    src = np.ones(mb * 2**20 // 4, np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / _best_seconds(lambda: np.copyto(dst, src), tries)


def device_copy_bandwidth(mb: int = 512, tries: int = 3) -> float:
    """The same measured on JAX's default device (used for the bound when that is a GPU)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones(mb * 2**20 // 4, jnp.float32)
    copy = jax.jit(lambda a: a + 0.0)
    return 2 * x.nbytes / _best_seconds(lambda: copy(x).block_until_ready(), tries)


def matmul_peak(n: int = 2048, tries: int = 3) -> float:
    """FLOP/s of the best of `tries` (n, n) @ (n, n) float32 products under jax.jit on the default
    device: the rate a step's matrix products could reach at best."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    return 2 * n**3 / _best_seconds(lambda: mm(a).block_until_ready(), tries)


def decode_flops(rows: int, layers: int, hidden: int, ffn: int, vocab: int, prompt: int, new_tokens: int) -> float:
    """FLOPs of one decode step of an OPT: the layers' products (q, k, v, out: 4 E x E; fc1, fc2:
    2 E x F) and the vocabulary head for every row, plus the scores and values over the cache at
    its mean length (prompt + N/2). Layer norms and the softmax are left out (a few percent)."""
    per_row = 2 * layers * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * hidden * vocab
    return rows * (per_row + layers * 4 * (prompt + new_tokens / 2) * hidden)


def compute_ms_per_token(flops: float, peak: float) -> float:
    return flops / peak * 1e3


def param_bytes(module) -> int:
    """Bytes of every parameter of an nnx module at its stored dtype (a tied lm_head counts once,
    as it is one array)."""
    import jax
    from flax import nnx

    return sum(int(x.nbytes) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def kv_bytes(rows: int, layers: int, hidden: int, prompt: int, new_tokens: int, itemsize: int) -> float:
    """Keys and values a step reads at the caption's mean cache length: decode step j (1..N-1)
    feeds new token j into a cache then holding prompt + j entries, on average prompt + N/2."""
    return rows * layers * 2 * (prompt + new_tokens / 2) * hidden * itemsize


def bound_ms_per_token(weight_bytes: int, cache_bytes: float, bandwidth: float) -> float:
    return (weight_bytes + cache_bytes) / bandwidth * 1e3


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict:
    import jax
    import torch

    return dict(cpu=cpu_model(), processor=platform.processor(), cores=os.cpu_count(),
                jax_device=f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
                jax=jax.__version__, torch=torch.__version__, torch_threads=torch.get_num_threads(),
                date=datetime.datetime.now().isoformat(timespec="seconds"))
