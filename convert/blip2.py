"""transformers Blip2ForConditionalGeneration (OPT) -> vlrm_jax captioner folder.

    python -m convert.blip2 --src Salesforce/blip2-opt-2.7b --dst checkpoints/blip2-opt-2.7b
"""
from __future__ import annotations

import dataclasses
import json
import os

from flax import nnx

from convert import cli, rules
from convert.sources import open_hf_dir, resolve_hf
from convert.table import expand, iter_torch_to_flax
from vlrm_jax.checkpoint.kinds import BLIP2_OPT as KIND
from vlrm_jax.checkpoint.model_dir import write_model_dir
from vlrm_jax.loading import override_precision
from vlrm_jax.models import build
from vlrm_jax.models.blip2 import Blip2Captioner, Blip2Config
from vlrm_jax.models.opt import OPTConfig
from vlrm_jax.models.qformer import QFormerConfig
from vlrm_jax.models.vit import VisionConfig

TIED_KEYS = ["language_model.lm_head.weight"]  # tied to the token embedding; not a parameter here


def _pick(cls, hf_cfg, **renames):
    """Fill a dataclass from a transformers config object (attribute names equal unless renamed)."""
    out = {}
    for f in dataclasses.fields(cls):
        attr = renames.get(f.name, f.name)
        if f.name in ("dtype", "param_dtype") or not hasattr(hf_cfg, attr):
            continue
        out[f.name] = getattr(hf_cfg, attr)
    return cls(**out)


def vision_config(hf) -> VisionConfig:
    return _pick(VisionConfig, hf)


def qformer_config(hf) -> QFormerConfig:
    return _pick(QFormerConfig, hf)


def opt_config(hf) -> OPTConfig:
    if not getattr(hf, "layer_norm_elementwise_affine", True):
        raise ValueError("OPT with layer_norm_elementwise_affine=False is not supported")
    return _pick(OPTConfig, hf, remove_final_layer_norm="_remove_final_layer_norm")


def config_from_hf_config(hf, origin: str = "config") -> Blip2Config:
    """This package's config from a transformers Blip2Config (BLIP2 with an OPT language model)."""
    if hf.model_type != "blip-2" or hf.text_config.model_type != "opt":
        raise ValueError(f"{origin}: expected a BLIP2 model with an OPT language model, got "
                         f"{hf.model_type}/{getattr(hf.text_config, 'model_type', None)}")
    return Blip2Config(
        vision=vision_config(hf.vision_config),
        qformer=qformer_config(hf.qformer_config),
        text=opt_config(hf.text_config),
        num_query_tokens=hf.num_query_tokens,
        image_token_index=hf.image_token_index,
    )


def config_from_hf(model_dir: str) -> tuple[Blip2Config, dict]:
    from transformers import AutoConfig

    cfg = config_from_hf_config(AutoConfig.from_pretrained(model_dir), model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        return cfg, json.load(f)


def table(cfg: Blip2Config):
    t = cfg.text
    return [
        *rules.vision_rules("vision_model.", "vision_model."),
        rules.Rule("query_tokens", "query_tokens"),
        *rules.qformer_rules("qformer.", "qformer."),
        *rules._linear("language_projection", "language_projection", None),
        *rules.opt_rules(
            "language_model.model.decoder.", "language_model.",
            project=t.word_embed_proj_dim != t.hidden_size,
            final_norm=t.do_layer_norm_before and not t.remove_final_layer_norm,
        ),
    ]


def layer_sets(cfg: Blip2Config) -> dict[str, list[int]]:
    return {
        "vision": list(range(cfg.vision.num_hidden_layers)),
        "opt": list(range(cfg.text.num_hidden_layers)),
        **rules.qformer_layer_sets(cfg.qformer),
    }


def convert(src: str, dst: str, dtype: str | None = None, overwrite: bool = False, progress: bool = True) -> None:
    model_dir = resolve_hf(src)
    cfg, hf_config = config_from_hf(model_dir)
    cfg = override_precision(cfg, None, dtype, ("vision", "text"))  # the Q-Former stays fp32
    source = rules.adapt_legacy_qkv_bias(open_hf_dir(model_dir), "vision_model.", cfg.vision.num_hidden_layers)
    abstract = build.flat_params(build.abstract(lambda: Blip2Captioner(cfg, rngs=nnx.Rngs(0))))
    entries = expand(table(cfg), layer_sets(cfg))
    params = iter_torch_to_flax(source, entries, abstract, ignore=TIED_KEYS, progress=progress)
    write_model_dir(dst, KIND, cfg.to_dict(), params, hf_config=hf_config,
                    extra_files=cli.side_files(model_dir), overwrite=overwrite)


def main(argv=None):
    args = cli.base_parser(__doc__).parse_args(argv)
    convert(args.src, args.dst, args.dtype, args.overwrite, progress=not args.quiet)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    cli.run(main)
