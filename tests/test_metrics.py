"""ScalarLog writes event files TensorBoard reads back, and a fresh log replaces an old run."""
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vlrm_jax.metrics import ScalarLog


def _read(logdir):
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_round_trip_through_tensorboard(tmp_path):
    with ScalarLog(tmp_path / "tb") as log:
        log.scalars(0, "loss", [3.0, 2.5])
        log.scalars(2, "loss", [2.0])
        log.scalar("lr", 1e-3, 2)
    got = _read(tmp_path / "tb")
    assert [s for s, _ in got["loss"]] == [0, 1, 2]
    assert [round(v, 6) for _, v in got["loss"]] == [3.0, 2.5, 2.0]
    assert got["lr"][0][0] == 2


def test_a_fresh_log_clears_the_old_run(tmp_path):
    with ScalarLog(tmp_path / "tb") as log:
        log.scalars(0, "old", [1.0])
    with ScalarLog(tmp_path / "tb") as log:
        log.scalars(0, "new", [1.0])
    assert set(_read(tmp_path / "tb")) == {"new"}
