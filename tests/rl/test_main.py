"""`python main.py --config=configs/tiny.py` on 8 fake devices: a run killed with SIGKILL after a
checkpoint and started again ends exactly where an uninterrupted run ends, and says which step it
resumed from; SIGTERM checkpoints, says which step it saved and exits 0, and a start with a changed
learning rate and --allow_config_change resumes there and records the change; a bad config exits 2
naming the key before anything compiles."""
import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO
from tests.rl.main_runs import ARGS, STEPS, env, final_state, main, metrics, start, wait_for


@pytest.mark.slow
def test_killed_and_resumed_run_equals_uninterrupted(straight_run, tmp_path):
    import jax

    proc = start(tmp_path)
    wait_for(lambda: (tmp_path / "checkpoints" / "5").is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(metrics(tmp_path)) < STEPS, "the run ended before it could be killed"
    # a save cut short leaves orbax's temporary folder: it must never be loaded
    done = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    partial = tmp_path / "checkpoints" / f"{done[-1] + 5}.orbax-checkpoint-tmp-1"
    shutil.copytree(tmp_path / "checkpoints" / str(done[-1]), partial)
    for f in list(partial.rglob("*"))[::2]:
        if f.is_file():
            f.write_bytes(b"")
    resumed = main(tmp_path)
    assert f"main.py: resuming from step {done[-1]} ({tmp_path / 'checkpoints'})\n" in resumed.stdout
    want, got = metrics(straight_run), metrics(tmp_path)
    assert [m["step"] for m in got] == list(range(1, STEPS + 1))  # none twice, none missing
    assert got == want
    (a, rec_a), (b, rec_b) = final_state(straight_run), final_state(tmp_path)
    assert rec_a == rec_b == {"step": STEPS, "data_state": {"position": STEPS}, "data_skips": {}}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(a.step) == STEPS and float(want[-1]["loss/value"]) > 0


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_zero(tmp_path):
    proc = subprocess.Popen([sys.executable, "main.py", *ARGS, f"--config.workdir={tmp_path}"], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (tmp_path / "metrics.jsonl").exists() and len(metrics(tmp_path)) >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    last = metrics(tmp_path)[-1]["step"]
    assert last < STEPS and (tmp_path / "checkpoints" / str(last)).is_dir()
    assert f"main.py: SIGTERM: saved step {last}; start the same command again to resume\n" in stdout
    assert "stopped at step" not in stdout

    # started again under another learning rate: refused unless allowed, then recorded
    changed = ("--config.a2c.learning_rate=0.01",)
    refused = main(tmp_path, *changed, check=False)
    assert refused.returncode == 2 and "a2c.learning_rate: 0.03 -> 0.01" in refused.stderr, refused.stderr[-2000:]
    resumed = main(tmp_path, *changed, "--allow_config_change")
    assert f"main.py: resuming from step {last} ({tmp_path / 'checkpoints'})\n" in resumed.stdout
    assert f"main.py: stopped at step {STEPS} of {STEPS}" in resumed.stdout
    history = [json.loads(line) for line in (tmp_path / "config_history.jsonl").read_text().splitlines()]
    assert [(h["resumed_from_step"], h["changes"]) for h in history] == [
        (last, {"a2c.learning_rate": {"old": 0.03, "new": 0.01}})]
    assert [m["step"] for m in metrics(tmp_path)] == list(range(1, STEPS + 1))


@pytest.mark.parametrize("arg,key", [("--config.nonsense=1", "nonsense"), ("--config.total_steps=abc", "total_steps"),
                                     ("--config.batch_size=12", "batch_size"), ("--config.a2c.prob=soft", "a2c.prob"),
                                     ("--config.rollout.top_k=0", "rollout.top_k"),
                                     ("--config.reward.weights.sim=-1.0", "reward.weights.sim"),
                                     ("--config.model.source=folders", "model.captioner")])
def test_bad_config_exits_2_naming_the_key(tmp_path, arg, key):
    proc = main(tmp_path, arg, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert key in proc.stderr
    assert not (tmp_path / "checkpoints").exists()
