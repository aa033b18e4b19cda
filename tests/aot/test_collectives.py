"""Where the data-parallel gradients meet, read from the compiled TPU program: with
a2c.grad_reduce="step" once per step, with "micro_batch" in every micro-batch (and inside the
layer loop for the LoRA adapters). Equal updates either way: tests/rl/test_mesh.py."""
import pytest

from tests.aot.conftest import small_paper_config
from vlrm_jax.aot import hlo
from vlrm_jax.aot.compile import lower_step
from vlrm_jax.rl.assemble import abstract_step


def _all_reduces(devices, grad_reduce: str, micro_batches: int) -> tuple[int, float]:
    cfg = small_paper_config("vlrm", batch_size=16, micro_batches=micro_batches)
    cfg.a2c.grad_reduce = grad_reduce
    step, _ = abstract_step(cfg, devices, layers=1)
    counts = hlo.count(lower_step(step, cfg.batch_size).compile().as_text())
    return counts.collectives["all-reduce"]["count"], counts.collectives["all-reduce"]["bytes"]


@pytest.mark.slow
def test_gradients_meet_once_per_step(v5e_2x2):
    once, once_bytes = _all_reduces(v5e_2x2, "step", 4)
    every, every_bytes = _all_reduces(v5e_2x2, "micro_batch", 4)
    assert once < every and once_bytes < every_bytes / 2
