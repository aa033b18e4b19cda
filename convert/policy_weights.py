"""The trained part of a captioner folder alone, in transformers' names and layouts:

    python -m convert.policy_weights --src ckpt/vlrm-captioner --dst vlrm_policy.safetensors

A state dict of the query tokens, the Q-Former and the language projection (the parameters the
A2C update trains), as the paper's authors released their fine-tuned weights: load it into a
`Blip2ForConditionalGeneration` of the base checkpoint with `load_state_dict(..., strict=False)`.
"""
from __future__ import annotations

import argparse

from convert import blip2 as blip2_conv
from convert.table import expand, flax_to_torch
from convert.to_hf import _to_torch
from vlrm_jax.checkpoint import kinds
from vlrm_jax.checkpoint import model_dir as md
from vlrm_jax.models import build
from vlrm_jax.models.blip2 import POLICY_TRAINABLE, Blip2Config


def export(src: str, dst: str) -> list[str]:
    from safetensors.torch import save_file

    from vlrm_jax.api import Captioner

    meta = md.check_kind(src, kinds.BLIP2_OPT)
    cfg = Blip2Config.from_dict(meta["model"])
    flat = {p: md.to_numpy(v) for p, v in build.flat_params(Captioner.load(src).module).items()
            if p[0] in POLICY_TRAINABLE}
    entries = [e for e in expand(blip2_conv.table(cfg), blip2_conv.layer_sets(cfg)) if e.target[0] in POLICY_TRAINABLE]
    tensors = {k: _to_torch(v) for k, v in flax_to_torch(flat, entries).items()}
    save_file(tensors, dst, metadata={"format": "pt"})
    return sorted(tensors)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="vlrm_jax captioner folder (e.g. from python -m vlrm_jax.rl.export)")
    p.add_argument("--dst", required=True, help="output .safetensors file")
    args = p.parse_args(argv)
    names = export(args.src, args.dst)
    print(f"wrote {len(names)} tensors to {args.dst}")


if __name__ == "__main__":
    main()
