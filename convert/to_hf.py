"""vlrm_jax folder -> transformers folder (`Blip2ForConditionalGeneration` or `OPTForCausalLM`).

    python -m convert.to_hf --src checkpoints/finetuned --dst hf/finetuned [--overwrite] [--verbose]

This is how a fine-tuned captioner goes back into transformers. The output loads with
`from_pretrained` with no missing or unexpected keys (the lm_head is tied and not stored), and a
captioner's runs as transformers runs BLIP2: `generate(pixel_values=...)` (image_token_index set,
`<image>` in the tokenizer) and `AutoProcessor.from_pretrained` (Blip2Processor: tokenizer,
preprocessor_config.json, processor_config.json). Any captioner folder of this project converts:
one converted from transformers or exported carries these files and its transformers config, and
they are derived for one that lacks them (the tiny random captioner, the shapes world's models;
see vlrm_jax.checkpoint.transformers_files).

A missing or unreadable --src, or an existing --dst without --overwrite, prints `error: ...` and
exits with status 2. orbax's INFO lines show with --verbose only.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings

import numpy as np

from convert import blip2 as blip2_conv
from convert import cli
from convert import opt as opt_conv
from convert.table import expand, flax_to_torch
from vlrm_jax.checkpoint import kinds
from vlrm_jax.checkpoint import model_dir as md
from vlrm_jax.checkpoint import transformers_files
from vlrm_jax.checkpoint.transformers_files import hf_config_for  # noqa: F401 (bench/generate.py uses it here)
from vlrm_jax.models import build
from vlrm_jax.models.blip2 import Blip2Config

SKIPPED = {md.CONFIG_FILE, md.HF_CONFIG_FILE}


def _to_torch(array: np.ndarray):
    import torch

    with warnings.catch_warnings():  # the tensors are only read (saved): sharing read-only memory is safe
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        if array.dtype.name == "bfloat16":
            return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(array))


def _write_side_files(src: str, dst: str, meta: dict) -> dict:
    """Copy the folder's tokenizer and processor files to `dst`, completing a captioner's;
    returns the transformers config."""
    transformers_files.copy_files(transformers_files.side_files(src, SKIPPED), dst)
    hf_config = md.read_hf_config(src)
    if meta["kind"] != kinds.BLIP2_OPT:
        return hf_config or hf_config_for(meta["kind"], meta["model"])
    try:
        return transformers_files.complete_captioner_files(dst, meta["model"], hf_config)[1]
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None


def export(src: str, dst: str, overwrite: bool = False) -> None:
    from safetensors.torch import save_file

    md.check_destination(dst, overwrite)
    meta = md.read_config(src)
    kind = meta["kind"]
    if kind == kinds.BLIP2_OPT:
        if not transformers_files.has_tokenizer(src):
            raise ValueError(f"{src}: a captioner folder without a tokenizer (tokenizer.json / tokenizer_config.json)")
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
    with md.staged_dir(dst, overwrite) as tmp:
        hf_config = _write_side_files(src, tmp, meta)
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config, f, indent=2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="vlrm_jax model folder")
    p.add_argument("--dst", required=True, help="output transformers folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dst")
    p.add_argument("--verbose", action="store_true", help="show orbax's INFO lines")
    args = p.parse_args(argv)
    md.set_log_verbosity(args.verbose)
    export(args.src, args.dst, args.overwrite)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    cli.run(main)
