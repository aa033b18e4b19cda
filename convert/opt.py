"""transformers OPTForCausalLM -> vlrm_jax reference-LM folder.

    python -m convert.opt --src facebook/opt-2.7b --dst checkpoints/opt-2.7b
"""
from __future__ import annotations

import dataclasses
import json
import os

from flax import nnx

from convert import cli, rules
from convert.blip2 import opt_config
from convert.sources import open_hf_dir, resolve_hf
from convert.table import expand, iter_torch_to_flax
from vlrm_jax.checkpoint.kinds import OPT as KIND
from vlrm_jax.checkpoint.model_dir import write_model_dir
from vlrm_jax.loading import override_precision
from vlrm_jax.models import build
from vlrm_jax.models.opt import OPTConfig, OPTForCausalLM

TIED_KEYS = ["lm_head.weight"]


def config_from_hf(model_dir: str) -> tuple[OPTConfig, dict]:
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(model_dir)
    if hf.model_type != "opt":
        raise ValueError(f"{model_dir}: expected an OPT model, got {hf.model_type}")
    with open(os.path.join(model_dir, "config.json")) as f:
        return opt_config(hf), json.load(f)


def table(cfg: OPTConfig):
    return rules.opt_rules(
        "model.decoder.", "",
        project=cfg.word_embed_proj_dim != cfg.hidden_size,
        final_norm=cfg.do_layer_norm_before and not cfg.remove_final_layer_norm,
    )


def layer_sets(cfg: OPTConfig):
    return {"opt": list(range(cfg.num_hidden_layers))}


def convert(src: str, dst: str, dtype: str | None = None, overwrite: bool = False, progress: bool = True) -> None:
    model_dir = resolve_hf(src)
    cfg, hf_config = config_from_hf(model_dir)
    cfg = override_precision(cfg, None, dtype, ("",))
    abstract = build.flat_params(build.abstract(lambda: OPTForCausalLM(cfg, rngs=nnx.Rngs(0))))
    params = iter_torch_to_flax(open_hf_dir(model_dir), expand(table(cfg), layer_sets(cfg)), abstract,
                                ignore=TIED_KEYS, progress=progress)
    write_model_dir(dst, KIND, dataclasses.asdict(cfg), params, hf_config=hf_config,
                    extra_files=cli.side_files(model_dir), overwrite=overwrite)


def main(argv=None):
    args = cli.base_parser(__doc__).parse_args(argv)
    convert(args.src, args.dst, args.dtype, args.overwrite, progress=not args.quiet)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    cli.run(main)
