"""vlrm_jax folder -> transformers folder (`Blip2ForConditionalGeneration` or `OPTForCausalLM`).

    python -m convert.to_hf --src checkpoints/finetuned --dst hf/finetuned

This is how a fine-tuned captioner goes back into transformers. The output loads with
`from_pretrained` with no missing or unexpected keys; the lm_head is tied and not stored.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np

from convert import blip2 as blip2_conv
from convert import cli
from convert import opt as opt_conv
from convert.table import expand, flax_to_torch
from vlrm_jax.checkpoint import kinds
from vlrm_jax.checkpoint import model_dir as md
from vlrm_jax.models import build
from vlrm_jax.models.blip2 import Blip2Config

SKIPPED = {md.CONFIG_FILE, md.HF_CONFIG_FILE}


def hf_config_for(kind: str, model_cfg: dict) -> dict:
    """A transformers config for folders that never came from transformers (the shapes world)."""
    from transformers import Blip2Config as HFBlip2Config, OPTConfig as HFOPTConfig

    def opt(c: dict) -> dict:
        c = {k: v for k, v in c.items() if k not in ("dtype", "param_dtype", "layer_norm_eps")}
        c["_remove_final_layer_norm"] = c.pop("remove_final_layer_norm")
        return HFOPTConfig(**c).to_dict()

    if kind == kinds.OPT:
        return opt(model_cfg)
    cfg = Blip2Config.from_dict(model_cfg)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("dtype", "param_dtype")}  # noqa: E731
    return HFBlip2Config(
        vision_config=strip(model_cfg["vision"]), qformer_config=model_cfg["qformer"],
        text_config=opt(model_cfg["text"]), num_query_tokens=cfg.num_query_tokens,
        image_token_index=cfg.image_token_index,
    ).to_dict()


def _to_torch(array: np.ndarray):
    import torch

    if array.dtype.name == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def export(src: str, dst: str, overwrite: bool = False) -> None:
    from safetensors.torch import save_file

    meta = md.read_config(src)
    kind = meta["kind"]
    if kind == kinds.BLIP2_OPT:
        cfg = Blip2Config.from_dict(meta["model"])
        entries = expand(blip2_conv.table(cfg), blip2_conv.layer_sets(cfg))
        from vlrm_jax.api import Captioner as Loader
    elif kind == kinds.OPT:
        from vlrm_jax.models.opt import OPTConfig

        cfg = OPTConfig(**meta["model"])
        entries = expand(opt_conv.table(cfg), opt_conv.layer_sets(cfg))
        from vlrm_jax.api import ReferenceLM as Loader
    else:
        raise ValueError(f"{src}: cannot export a {kind!r} model to transformers")
    flat = {p: md.to_numpy(v) for p, v in build.flat_params(Loader.load(src).module).items()}
    tensors = {k: _to_torch(v) for k, v in flax_to_torch(flat, entries).items()}
    hf_path = os.path.join(src, md.HF_CONFIG_FILE)
    if os.path.exists(hf_path):
        with open(hf_path) as f:
            hf_config = json.load(f)
    else:
        hf_config = hf_config_for(kind, meta["model"])
    with md.staged_dir(dst, overwrite) as tmp:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)
        for name in os.listdir(src):
            path = os.path.join(src, name)
            if os.path.isfile(path) and name not in SKIPPED:
                shutil.copy2(path, os.path.join(tmp, name))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--src", required=True, help="vlrm_jax model folder")
    p.add_argument("--dst", required=True, help="output transformers folder")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    export(args.src, args.dst, args.overwrite)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    cli.run(main)
