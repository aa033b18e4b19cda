"""transformers Blip2ForImageTextRetrieval -> vlrm_jax ITM folder.

    python -m convert.blip2_itm --src Salesforce/blip2-itm-vit-g --dst checkpoints/blip2-itm-vit-g
"""
from __future__ import annotations

import json
import os

from flax import nnx

from convert import cli, rules
from convert.blip2 import qformer_config, vision_config
from convert.sources import open_hf_dir, resolve_hf
from convert.table import Rule, expand, iter_torch_to_flax
from vlrm_jax.checkpoint.kinds import BLIP2_ITM as KIND
from vlrm_jax.checkpoint.model_dir import write_model_dir
from vlrm_jax.loading import override_precision
from vlrm_jax.models import build
from vlrm_jax.models.itm import Blip2Itm, ItmConfig



def config_from_hf_config(hf, origin: str = "config") -> ItmConfig:
    """This package's config from a transformers Blip2Config of Blip2ForImageTextRetrieval."""
    if hf.model_type != "blip-2" or "Blip2ForImageTextRetrieval" not in (hf.architectures or []):
        raise ValueError(f"{origin}: expected a Blip2ForImageTextRetrieval model "
                         f"(got {hf.model_type}, {hf.architectures})")
    return ItmConfig(vision=vision_config(hf.vision_config), qformer=qformer_config(hf.qformer_config),
                     num_query_tokens=hf.num_query_tokens, image_text_hidden_size=hf.image_text_hidden_size)


def config_from_hf(model_dir: str) -> tuple[ItmConfig, dict]:
    from transformers import AutoConfig

    cfg = config_from_hf_config(AutoConfig.from_pretrained(model_dir), model_dir)
    with open(os.path.join(model_dir, "config.json")) as f:
        return cfg, json.load(f)


def table(cfg: ItmConfig):
    return [
        *rules.vision_rules("vision_model.", "vision_model."),
        Rule("query_tokens", "query_tokens"),
        Rule("embeddings.word_embeddings.weight", "embeddings.word_embeddings.embedding"),
        Rule("embeddings.position_embeddings.weight", "embeddings.position_embeddings.embedding"),
        *rules.qformer_rules("qformer.", "qformer."),
        *rules._linear("vision_projection", "vision_projection", None),
        *rules._linear("text_projection", "text_projection", None),
        *rules._linear("itm_head", "itm_head", None),
    ]


def layer_sets(cfg: ItmConfig):
    return {"vision": list(range(cfg.vision.num_hidden_layers)), **rules.qformer_layer_sets(cfg.qformer)}


def convert(src: str, dst: str, dtype: str | None = None, overwrite: bool = False, progress: bool = True) -> None:
    model_dir = resolve_hf(src)
    cfg, hf_config = config_from_hf(model_dir)
    cfg = override_precision(cfg, None, dtype, ("vision",))  # the Q-Former stays fp32
    source = rules.adapt_legacy_qkv_bias(open_hf_dir(model_dir), "vision_model.", cfg.vision.num_hidden_layers)
    abstract = build.flat_params(build.abstract(lambda: Blip2Itm(cfg, rngs=nnx.Rngs(0))))
    params = iter_torch_to_flax(source, expand(table(cfg), layer_sets(cfg)), abstract, progress=progress)
    write_model_dir(dst, KIND, cfg.to_dict(), params, hf_config=hf_config,
                    extra_files=cli.side_files(model_dir), overwrite=overwrite)


def main(argv=None):
    args = cli.base_parser(__doc__).parse_args(argv)
    convert(args.src, args.dst, args.dtype, args.overwrite, progress=not args.quiet)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    cli.run(main)
