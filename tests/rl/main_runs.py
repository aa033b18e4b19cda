"""main.py runs on the tiny config in a subprocess, as a user starts them (shared by the
end-to-end trials)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO

STEPS = 30  # a few seconds of steps after compiling: room to interrupt the run mid-way
ARGS = ["--config=configs/tiny.py", f"--config.total_steps={STEPS}", "--config.checkpoint_every=5"]
TIMING = ("time/step_s", "time/captions_per_s")


def env(devices: int = 8):
    """The test run's environment for a main.py subprocess with `devices` CPU devices: the XLA
    flags `make test` sets (compile-time savings) kept, the device count replaced."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
                XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]))


def main(workdir, *extra, check=True):
    proc = subprocess.run([sys.executable, "main.py", *ARGS, f"--config.workdir={workdir}", *extra], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"main.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def start(workdir):
    return subprocess.Popen([sys.executable, "main.py", *ARGS, f"--config.workdir={workdir}"], cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc, seconds=300):
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, f"main.py ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.2)


def metrics(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k not in TIMING} for ln in lines]


def final_state(workdir):
    from vlrm_jax.config_utils import load_config
    from vlrm_jax.rl import run
    from vlrm_jax.rl.checkpoint import Checkpoints

    cfg = load_config(Path(REPO) / "configs" / "tiny.py")
    cfg.mesh.data = 1  # the template only gives shapes; restore places it on one device
    cfg.workdir = str(workdir)
    step, *_ = run.build(cfg)
    ckpt = Checkpoints(Path(workdir) / "checkpoints")
    state, record = ckpt.restore(step.init_state(0))
    ckpt.close()
    return state, record
