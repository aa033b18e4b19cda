"""Faults during training, on the tiny run: non-finite updates are skipped and, too many in a row,
stop the run with its last good checkpoint intact; a failed checkpoint write is a clear error
that leaves the previous checkpoint loadable; bad images in the training stream are skipped and
counted; a tokenizer that does not fit its model fails before compiling, naming the file."""
import dataclasses
import errno
import io

import jax
import numpy as np
import pytest
from PIL import Image

from vlrm_jax.config_utils import load_config
from vlrm_jax.rl import loop, run
from vlrm_jax.rl.checkpoint import Checkpoints


def _cfg(workdir, **overrides):
    cfg = load_config("tiny")
    cfg.workdir, cfg.mesh.data = str(workdir), 1
    for key, value in overrides.items():
        target = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One built step (compiled once) reused by the runs below, each in its own workdir."""
    cfg = _cfg(tmp_path_factory.mktemp("faults_models"))
    step, stream, loop_cfg, hooks, _ = run.build(cfg)
    return step, stream, dataclasses.replace(loop_cfg, progress=False, samples_every=0), cfg.seed


class NanFrom:
    """The stream's batches, with NaN pixels from data position `start` on."""

    def __init__(self, stream, start):
        self.stream, self.start = stream, start

    def batches(self, state):
        for batch, new_state in self.stream.batches(state):
            if new_state["position"] > self.start:
                batch = {k: np.full_like(v, np.nan) for k, v in batch.items()}
            yield batch, new_state

    def skip_counts(self):
        return {}


def test_nonfinite_updates_are_skipped_then_stop_the_run(tiny, tmp_path):
    step, stream, loop_cfg, seed = tiny
    cfg = dataclasses.replace(loop_cfg, workdir=str(tmp_path), total_steps=12, checkpoint_every=2, max_skips_in_row=3)
    with pytest.raises(loop.TooManySkips, match="3 updates in a row.*last good checkpoint is step"):
        loop.train(step, NanFrom(stream, 4), cfg)
    ckpt = Checkpoints(tmp_path / "checkpoints")
    state, record = ckpt.restore(step.init_state(seed))
    ckpt.close()
    leaves = jax.tree.leaves((state.policy, state.value, state.policy_opt, state.value_opt))
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)  # no NaN reached a checkpoint
    assert int(state.skipped) <= 3 and record["step"] <= 7


def test_failed_checkpoint_write_is_a_clear_error_and_keeps_the_previous(tiny, tmp_path, monkeypatch):
    step, stream, loop_cfg, seed = tiny
    cfg = dataclasses.replace(loop_cfg, workdir=str(tmp_path), total_steps=6, checkpoint_every=2)
    real_save, calls = Checkpoints.save, []

    def disk_full(self, *args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Checkpoints, "save", disk_full)
    with pytest.raises(loop.CheckpointError, match="checkpoint 4 .*No space left.*last complete checkpoint is step 2"):
        loop.train(step, stream, cfg)
    monkeypatch.undo()
    ckpt = Checkpoints(tmp_path / "checkpoints")
    assert ckpt.latest_step() == 2
    state, record = ckpt.restore(step.init_state(seed))
    ckpt.close()
    assert int(state.step) == 2 and record["data_state"] == {"position": 2}


def _png(size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


def test_bad_images_in_the_training_stream_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(20):
        (folder / f"good_{i:02d}.png").write_bytes(_png(20, seed=i))
    (folder / "palette.png").write_bytes(_png(20, "P"))  # odd modes decode to RGB
    (folder / "cmyk.jpg").write_bytes(_png(20, "CMYK"))
    (folder / "grey.png").write_bytes(_png(20, "L"))
    good = _png(20, seed=99)
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG not an image at all" * 10)
    (folder / "empty.png").write_bytes(b"")
    (folder / "tiny.png").write_bytes(_png(4))
    cfg = _cfg(tmp_path / "run", **{"data.source": str(folder), "data.min_side": 8, "data.workers": 2,
                                    "total_steps": 3, "checkpoint_every": 3})
    step, stream, loop_cfg, hooks, _ = run.build(cfg)
    state = loop.train(step, stream, dataclasses.replace(loop_cfg, progress=False), hooks)
    assert int(state.step) == 3 and int(state.skipped) == 0
    ckpt = Checkpoints(tmp_path / "run" / "checkpoints")
    _, record = ckpt.restore(step.init_state(cfg.seed))
    ckpt.close()
    assert sum(record["data_skips"].values()) >= 4, record["data_skips"]  # each bad file, every epoch it comes by
    import json

    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["data/skipped"] == sum(record["data_skips"].values())


def test_tokenizer_larger_than_the_model_fails_before_compiling(tmp_path):
    from vlrm_jax.testing.tiny import save_tiny_tokenizer

    cfg = _cfg(tmp_path)
    folder = run.write_random_captioner(cfg.model, tmp_path / "models" / "captioner")
    save_tiny_tokenizer(folder, vocab_size=cfg.model.vocab_size + 10)
    with pytest.raises(run.ConfigError, match=r"model.captioner: .*tokenizer.json has 50 tokens"):
        run.build(cfg)


class SigtermAt:
    """The stream's batches; SIGTERM arrives while batch `position` is being produced, i.e.
    while the previous step still runs (the signal never interrupts a step)."""

    def __init__(self, stream, position):
        self.stream, self.position = stream, position

    def batches(self, state):
        import os
        import signal

        for batch, new_state in self.stream.batches(state):
            if new_state["position"] == self.position:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch, new_state

    def skip_counts(self):
        return {}


def test_sigterm_during_a_step_or_an_evaluation_checkpoints_and_returns(tiny, tmp_path):
    import os
    import signal

    step, stream, loop_cfg, seed = tiny
    cfg = dataclasses.replace(loop_cfg, workdir=str(tmp_path / "step"), total_steps=20, checkpoint_every=50)
    state = loop.train(step, SigtermAt(stream, 3), cfg)
    assert int(state.step) == 3  # the step in flight finished, then the loop saved and stopped
    assert Checkpoints(tmp_path / "step" / "checkpoints").latest_step() == 3

    calls = []

    def slow_evaluation(state, done):
        calls.append(done)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives during the evaluation
        return {"R@1": 0.5}

    cfg = dataclasses.replace(cfg, workdir=str(tmp_path / "eval"), eval_every=2)
    state = loop.train(step, stream, cfg, loop.Hooks(evaluate=slow_evaluation))
    assert calls == [2] and int(state.step) == 2
    assert Checkpoints(tmp_path / "eval" / "checkpoints").latest_step() == 2


def test_checkpoints_go_to_checkpoint_dir_and_urls_are_checked(tiny, tmp_path):
    step, stream, loop_cfg, seed = tiny
    cfg = dataclasses.replace(loop_cfg, workdir=str(tmp_path / "run"), checkpoint_dir=str(tmp_path / "elsewhere"),
                              total_steps=2, checkpoint_every=2)
    loop.train(step, stream, cfg)
    assert Checkpoints(tmp_path / "elsewhere").latest_step() == 2
    assert not (tmp_path / "run" / "checkpoints").exists() and (tmp_path / "run" / "metrics.jsonl").is_file()

    run.validate(_cfg(tmp_path, checkpoint_dir="gs://bucket/run/checkpoints"))  # a pod's shared store
    with pytest.raises(run.ConfigError, match=r"checkpoint_dir: 'ftp://host/x'"):
        run.validate(_cfg(tmp_path, checkpoint_dir="ftp://host/x"))
    with pytest.raises(run.ConfigError, match=r"workdir: 'gs://bucket/run'.*checkpoint_dir=gs://"):
        run.validate(_cfg("gs://bucket/run"))
