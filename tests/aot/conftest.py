"""TPU compile targets for the tests: libtpu builds compile-only devices of a topology on this
CPU machine (nothing runs on them)."""
import pytest


@pytest.fixture(scope="session")
def v5e_2x2():
    """A 4-chip v5e slice's devices."""
    from vlrm_jax.aot import topology

    return topology.devices(topology.parse("v5e:2x2"))


def small_paper_config(variant: str, batch_size: int = 8, micro_batches: int = 2):
    """configs/vlrm.py or vlrm_rs.py with a batch a 4-chip slice and a test's time can take."""
    from vlrm_jax.config_utils import load_config

    cfg = load_config(variant)
    cfg.mesh.data, cfg.mesh.tensor = -1, 1  # the batch over all 4 chips: the callback runs per shard
    cfg.batch_size = batch_size
    cfg.a2c.micro_batches = micro_batches
    return cfg
