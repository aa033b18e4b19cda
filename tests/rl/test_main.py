"""`python main.py --config=configs/tiny.py` on 8 fake devices: a run killed with SIGKILL after a
checkpoint and started again ends exactly where an uninterrupted run ends; SIGTERM checkpoints
and exits 0; a bad config exits 2 naming the key before anything compiles."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO

STEPS = 30  # a few seconds of steps after compiling: room to interrupt the run mid-way
ARGS = ["--config=configs/tiny.py", f"--config.total_steps={STEPS}", "--config.checkpoint_every=5"]
TIMING = ("time/step_s", "time/captions_per_s")


def _env():
    return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
                XLA_FLAGS="--xla_force_host_platform_device_count=8")


def _main(workdir, *extra, check=True):
    proc = subprocess.run([sys.executable, "main.py", *ARGS, f"--config.workdir={workdir}", *extra], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _start(workdir):
    return subprocess.Popen([sys.executable, "main.py", *ARGS, f"--config.workdir={workdir}"], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, seconds=300):
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, f"main.py ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def _metrics(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMING} for ln in lines]


def _final_state(workdir):
    from vlrm_jax.config_utils import load_config
    from vlrm_jax.rl import run
    from vlrm_jax.rl.checkpoint import Checkpoints

    cfg = load_config(Path(REPO) / "configs" / "tiny.py")
    cfg.mesh_data = 1  # the template only gives shapes; restore places it on one device
    cfg.workdir = str(workdir)
    step, *_ = run.build(cfg)
    ckpt = Checkpoints(Path(workdir) / "checkpoints")
    state, record = ckpt.restore(step.init_state(0))
    ckpt.close()
    return state, record


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight")
    _main(workdir)
    return workdir


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(straight_run, tmp_path):
    import jax

    proc = _start(tmp_path)
    _wait_for(lambda: (tmp_path / "checkpoints" / "5").is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_metrics(tmp_path)) < STEPS, "the run ended before it could be killed"
    # a save cut short leaves orbax's temporary folder: it must never be loaded
    done = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    partial = tmp_path / "checkpoints" / f"{done[-1] + 5}.orbax-checkpoint-tmp-1"
    shutil.copytree(tmp_path / "checkpoints" / str(done[-1]), partial)
    for f in list(partial.rglob("*"))[::2]:
        if f.is_file():
            f.write_bytes(b"")
    _main(tmp_path)
    want, got = _metrics(straight_run), _metrics(tmp_path)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))  # none twice, none missing
    assert got == want
    (a, rec_a), (b, rec_b) = _final_state(straight_run), _final_state(tmp_path)
    assert rec_a == rec_b == {"step": STEPS, "data_state": {"position": STEPS}, "data_skips": {}}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(a.step) == STEPS and float(want[-1]["loss/value"]) > 0


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    proc = _start(tmp_path)
    _wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and len(_metrics(tmp_path)) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0
    last = _metrics(tmp_path)[-1]["step"]
    assert last < STEPS and (tmp_path / "checkpoints" / str(last)).is_dir()


@pytest.mark.parametrize("arg,key", [("--config.nonsense=1", "nonsense"), ("--config.total_steps=abc", "total_steps"),
                                     ("--config.batch_size=12", "batch_size"), ("--config.a2c.prob=soft", "a2c.prob"),
                                     ("--config.rollout.top_k=0", "rollout.top_k"),
                                     ("--config.model.source=folders", "model.captioner")])
def test_bad_config_exits_2_naming_the_key(tmp_path, arg, key):
    proc = _main(tmp_path, arg, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert key in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
