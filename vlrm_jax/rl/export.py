"""A training checkpoint's policy as a captioner folder that `Captioner.load`, the caption CLI and
`python -m convert.to_hf` read:

    python -m vlrm_jax.rl.export --workdir runs/vlrm --dst ckpt/vlrm-captioner [--step N]

The folder is the run's captioner folder with the trained parameters (query tokens, Q-Former,
language projection) put in; config, transformers config and tokenizer files are copied from it.
`python -m convert.policy_weights` then writes the trained parameters alone in transformers'
names, the form the paper's authors released theirs in.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from vlrm_jax.checkpoint import kinds
from vlrm_jax.checkpoint import model_dir as md
from vlrm_jax.models.build import flat_params
from vlrm_jax.rl.checkpoint import checkpoint_location
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.run import RUN_CONFIG
from vlrm_jax.rl.trainable import split_trainable


def _restore_flat(directory, step: int | None) -> tuple[int, dict]:
    manager = ocp.CheckpointManager(directory)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{directory}: no complete checkpoint")
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, dict(out.state)


def export(workdir: str, dst: str, step: int | None = None, overwrite: bool = False) -> int:
    """Write the policy of checkpoint `step` (default: the latest) as a captioner folder; returns
    the step exported."""
    from vlrm_jax.api import Captioner

    workdir = Path(workdir)
    record = json.loads((workdir / RUN_CONFIG).read_text())
    src = record["captioner_dir"]
    captioner = Captioner.load(src)
    rules = A2CConfig(**record["config"]["a2c"]).policy_trainable
    _, trained, _ = split_trainable(captioner.module, rules, "policy")
    step, flat = _restore_flat(checkpoint_location(workdir, record["config"].get("checkpoint_dir", "")), step)
    params = {p: np.asarray(v) for p, v in flat_params(captioner.module).items()}
    for path, _ in nnx.to_flat_state(trained):
        key = ".policy" + "".join(f"[{k!r}]" for k in path) + ".value"  # as checkpoint.py flattens TrainState
        if key not in flat:
            raise KeyError(f"checkpoint {step} of {workdir} lacks the policy parameter {key}")
        params[path] = np.asarray(flat[key], params[path].dtype)
    meta = md.read_config(src)
    hf_config = None
    if os.path.isfile(os.path.join(src, md.HF_CONFIG_FILE)):
        hf_config = json.loads(Path(src, md.HF_CONFIG_FILE).read_text())
    side = [os.path.join(src, n) for n in os.listdir(src)
            if os.path.isfile(os.path.join(src, n)) and n not in (md.CONFIG_FILE, md.HF_CONFIG_FILE)]
    md.write_model_dir(dst, kinds.BLIP2_OPT, meta["model"], params, hf_config=hf_config, extra_files=side,
                       overwrite=overwrite)
    return step


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the training run's workdir")
    p.add_argument("--dst", required=True, help="output captioner folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    step = export(args.workdir, args.dst, args.step, args.overwrite)
    print(f"wrote the policy of step {step} to {args.dst}")


if __name__ == "__main__":
    main()
