"""A training checkpoint's policy as a captioner folder that `Captioner.load`, the caption CLI and
`python -m convert.to_hf` read:

    python -m vlrm_jax.rl.export --workdir runs/vlrm --dst ckpt/vlrm-captioner [--step N] [--overwrite]

The folder is the run's captioner folder with the trained parameters (query tokens, Q-Former,
language projection) put in, and is complete as a converted folder is: config.json, params/, the
tokenizer (with BLIP2's `<image>` placeholder), Blip2Processor's preprocessor_config.json and
processor_config.json, and hf_config.json (the transformers config). What the run's folder lacks
is derived (vlrm_jax.checkpoint.transformers_files): a tiny random run's folder gets its
tokenizer, a shapes-world one its processor files and transformers config.
`python -m convert.policy_weights` then writes the trained parameters alone in transformers'
names, the form the paper's authors released theirs in.

A missing workdir, run record or checkpoint, or an existing --dst without --overwrite, prints
`error: ...` and exits with status 2. orbax's INFO lines show with --verbose only.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from vlrm_jax.checkpoint import kinds
from vlrm_jax.checkpoint import model_dir as md
from vlrm_jax.checkpoint import transformers_files
from vlrm_jax.models.build import flat_params
from vlrm_jax.rl.checkpoint import checkpoint_location
from vlrm_jax.rl.config import A2CConfig
from vlrm_jax.rl.run import random_captioner_tokenizer
from vlrm_jax.rl.run_config import RUN_CONFIG
from vlrm_jax.rl.trainable import split_trainable


def _run_record(workdir: Path) -> dict:
    if not workdir.is_dir():
        raise FileNotFoundError(f"{workdir}: no such workdir")
    path = workdir / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} has no {RUN_CONFIG}: not a training workdir (main.py writes it)")
    return json.loads(path.read_text())


def _restore_flat(directory, step: int | None) -> tuple[int, dict]:
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no checkpoints")
    manager = ocp.CheckpointManager(directory)
    steps = manager.all_steps()
    if not steps:
        raise FileNotFoundError(f"{directory}: no complete checkpoint")
    step = manager.latest_step() if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"{directory}: no checkpoint of step {step} (there are {sorted(steps)})")
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, dict(out.state)


def _policy_params(captioner, record: dict, flat: dict, where: str) -> dict:
    """The captioner's parameters with the checkpoint's trained ones put in."""
    rules = A2CConfig(**record["config"]["a2c"]).policy_trainable
    _, trained, _ = split_trainable(captioner.module, rules, "policy")
    params = {p: np.asarray(v) for p, v in flat_params(captioner.module).items()}
    for path, _ in nnx.to_flat_state(trained):
        key = ".policy" + "".join(f"[{k!r}]" for k in path) + ".value"  # as checkpoint.py flattens TrainState
        if key not in flat:
            raise ValueError(f"{where} lacks the policy parameter {key}")
        params[path] = np.asarray(flat[key], params[path].dtype)
    return params


def _side_files(src: str, record: dict, side: str, meta: dict) -> tuple[dict, dict]:
    """The run's captioner files beside the parameters, completed in `side`; returns the model
    and transformers configs."""
    transformers_files.copy_files(transformers_files.side_files(src, {md.CONFIG_FILE, md.HF_CONFIG_FILE}), side)
    if not transformers_files.has_tokenizer(side) and record["config"]["model"].get("source") == "random":
        # a random captioner folder that lacks its tokenizer gets the one write_random_captioner writes
        random_captioner_tokenizer(meta["model"]["text"]["vocab_size"]).save_pretrained(side)
    try:
        return transformers_files.complete_captioner_files(side, meta["model"], md.read_hf_config(src))
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None


def export(workdir: str, dst: str, step: int | None = None, overwrite: bool = False) -> int:
    """Write the policy of checkpoint `step` (default: the latest) as a captioner folder; returns
    the step exported."""
    from vlrm_jax.api import Captioner

    workdir = Path(workdir)
    record = _run_record(workdir)
    md.check_destination(dst, overwrite)
    location = checkpoint_location(workdir, record["config"].get("checkpoint_dir", ""))
    step, flat = _restore_flat(location, step)
    src = record["captioner_dir"]
    meta = md.check_kind(src, kinds.BLIP2_OPT)
    captioner = Captioner.load(src)
    params = _policy_params(captioner, record, flat, f"checkpoint {step} of {workdir}")
    with transformers_files.staging_folder() as side:
        model_cfg, hf_config = _side_files(src, record, side, meta)
        md.write_model_dir(dst, kinds.BLIP2_OPT, model_cfg, params, hf_config=hf_config,
                           extra_files=transformers_files.side_files(side, set()), overwrite=overwrite)
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the training run's workdir")
    p.add_argument("--dst", required=True, help="output captioner folder")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
    p.add_argument("--verbose", action="store_true", help="show orbax's INFO lines")
    args = p.parse_args(argv)
    md.set_log_verbosity(args.verbose)
    try:
        step = export(args.workdir, args.dst, args.step, args.overwrite)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote the policy of step {step} to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
