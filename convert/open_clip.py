"""open_clip CLIP (ViT image tower + text transformer) -> vlrm_jax CLIP folder.

    python -m convert.open_clip --model ViT-bigG-14 --pretrained laion2b_s39b_b160k --dst checkpoints/clip-bigG
    python -m convert.open_clip --model ViT-g-14 --pretrained laion2b_s12b_b42k --dst checkpoints/clip-g
    python -m convert.open_clip --model my-clip --model-config my-clip.json --pretrained weights.pt --dst out

--pretrained is an open_clip pretrained tag (downloaded through open_clip's own registry) or a
local state-dict file (.bin / .pt / .pth written by torch.save, or .safetensors). --model-config
registers a model config JSON with open_clip under --model, so a name open_clip does not ship works.

Besides the parameters the folder holds
    open_clip_config.json  {"model_cfg", "preprocess_cfg", "model_name", "pretrained"}: open_clip's
                           own `local-dir:` layout, so `open_clip.get_tokenizer("local-dir:DIR")`
                           rebuilds the tokenizer offline (its BPE merges ship with open_clip)
    preprocess.json        the eval transform: image_size, mean, std, resize_mode, interpolation,
                           fill_color (the arguments of vlrm_jax.data.OpenClipPreprocessor)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Iterator

import numpy as np
from flax import nnx

from convert import cli, rules
from convert.sources import TensorSource, open_file
from convert.table import CONV, IDENTITY, LINEAR, Rule, Transform, expand, iter_torch_to_flax
from vlrm_jax.checkpoint.model_dir import write_model_dir
from vlrm_jax.checkpoint.kinds import OPEN_CLIP as KIND
from vlrm_jax.checkpoint.open_clip_files import preprocess_config, write_side_files
from vlrm_jax.loading import override_precision
from vlrm_jax.models import build
from vlrm_jax.models.clip import ClipConfig, ClipModel


# open_clip stores logit_scale either as a scalar or as shape (1,) (nonscalar_logit_scale) and
# reshapes on load; here it is always a scalar. Other sizes stay as they are, so the shape check
# names the key.
SCALAR = Transform("scalar", lambda x: x.reshape(()) if x.size == 1 else x, lambda x: x.reshape(()))


def _block_rules(src: str, dst: str, layers: str) -> list[Rule]:
    """open_clip ResidualAttentionBlock `{src}{i}.` -> stacked `ResidualBlock` under `dst`."""
    return [
        *rules._norm(f"{src}ln_1", f"{dst}ln_1", layers),
        Rule(f"{src}attn.in_proj_weight", f"{dst}in_proj.kernel", LINEAR, layers),
        Rule(f"{src}attn.in_proj_bias", f"{dst}in_proj.bias", IDENTITY, layers),
        *rules._linear(f"{src}attn.out_proj", f"{dst}out_proj", layers),
        *rules._norm(f"{src}ln_2", f"{dst}ln_2", layers),
        *rules._linear(f"{src}mlp.c_fc", f"{dst}c_fc", layers),
        *rules._linear(f"{src}mlp.c_proj", f"{dst}c_proj", layers),
    ]


def vision_rules(cfg: ClipConfig) -> list[Rule]:
    out = [
        Rule("visual.conv1.weight", "visual.conv1.kernel", CONV),
        Rule("visual.class_embedding", "visual.class_embedding"),
        Rule("visual.positional_embedding", "visual.positional_embedding"),
        *_block_rules("visual.transformer.resblocks.{i}.", "visual.blocks.", "vision"),
        *rules._norm("visual.ln_post", "visual.ln_post", None),
        Rule("visual.proj", "visual.proj"),
    ]
    if not cfg.vision.no_ln_pre:
        out += rules._norm("visual.ln_pre", "visual.ln_pre", None)
    return out


def text_rules(cfg: ClipConfig) -> list[Rule]:
    # open_clip's CLIP keeps the text tower's parts at the top level of its state dict
    out = [
        Rule("token_embedding.weight", "text.token_embedding.embedding"),
        Rule("positional_embedding", "text.positional_embedding"),
        *_block_rules("transformer.resblocks.{i}.", "text.blocks.", "text"),
        *rules._norm("ln_final", "text.ln_final", None),
    ]
    if cfg.text.proj_bias:
        out += rules._linear("text_projection", "text.text_projection", None)
    else:
        out.append(Rule("text_projection", "text.text_projection"))
    return out


def table(cfg: ClipConfig) -> list[Rule]:
    out = [*vision_rules(cfg), *text_rules(cfg), Rule("logit_scale", "logit_scale", SCALAR)]
    if cfg.logit_bias:
        out.append(Rule("logit_bias", "logit_bias", SCALAR))
    return out


def layer_sets(cfg: ClipConfig) -> dict[str, list[int]]:
    return {"vision": list(range(cfg.vision.layers)), "text": list(range(cfg.text.layers))}


def strip_module_prefix(source: TensorSource) -> TensorSource:
    """Checkpoints saved from DistributedDataParallel prefix every key with `module.`; open_clip
    drops it on load, and so do we."""
    keys = source.keys()
    if not keys or not all(k.startswith("module.") for k in keys):
        return source
    return TensorSource({k[len("module."):]: (lambda k=k: source.load(k)) for k in keys},
                        {k[len("module."):]: source.shape(k) for k in keys}, source.origin)


def convert_source(source: TensorSource, cfg: ClipConfig, progress: bool = True) -> Iterator[tuple[tuple, np.ndarray]]:
    """(path, array) of every Flax parameter of `ClipModel(cfg)` from an open_clip state dict
    (strict), one at a time (see table.iter_torch_to_flax)."""
    abstract = build.flat_params(build.abstract(lambda: ClipModel(cfg, rngs=nnx.Rngs(0))))
    entries = expand(table(cfg), layer_sets(cfg))
    return iter_torch_to_flax(strip_module_prefix(source), entries, abstract, progress=progress)


# ---------------------------------------------------------------------------------------------
# open_clip's registries: model configs, pretrained tags, preprocessing defaults.
# ---------------------------------------------------------------------------------------------
def register_model_config(name: str, config_path: str) -> None:
    """Make `name` an open_clip model name (open_clip names a config after its file's stem)."""
    import open_clip

    with open(config_path) as f:
        model_cfg = json.load(f)
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise ValueError(f"{config_path}: not an open_clip model config (no {', '.join(missing)})")
    staging = tempfile.mkdtemp(prefix="open_clip_cfg-")
    try:
        copy = os.path.join(staging, f"{name}.json")
        shutil.copyfile(config_path, copy)
        open_clip.add_model_config(copy)  # read at once; the file is not needed afterwards
    finally:
        shutil.rmtree(staging)


def model_config(name: str) -> dict:
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {name!r}; pass its config JSON with --model-config")
    return cfg


def resolve_pretrained(name: str, tag_or_file: str) -> tuple[str, dict]:
    """(checkpoint path, pretrained config) as open_clip.create_model resolves `pretrained`: a known
    tag first (downloaded through open_clip's registry, hub or URL), else a local file."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model

    tag_cfg = get_pretrained_cfg(name, tag_or_file)
    if tag_cfg:
        try:
            path = download_pretrained(tag_cfg)
        except Exception as e:  # noqa: BLE001 - hub/URL errors come in many types; report them as one
            raise FileNotFoundError(f"could not fetch open_clip weights {name}:{tag_or_file}: {e}") from e
        if not path:
            raise FileNotFoundError(f"open_clip has no download location for {name}:{tag_or_file}")
        return path, tag_cfg
    if os.path.isfile(tag_or_file):
        return tag_or_file, {}
    raise FileNotFoundError(f"--pretrained {tag_or_file!r} is neither a file nor a pretrained tag of {name} "
                            f"(known tags: {list_pretrained_tags_by_model(name) or 'none'})")


def _check_tag_activation(name: str, model_cfg: dict, tag_cfg: dict) -> None:
    # open_clip only warns here and builds what the model config says; so do we, loudly.
    if tag_cfg and bool(tag_cfg.get("quick_gelu", False)) != bool(model_cfg.get("quick_gelu", False)):
        print(f"warning: {name}: the pretrained tag was trained with quick_gelu={tag_cfg.get('quick_gelu', False)} "
              f"but the model config says {model_cfg.get('quick_gelu', False)}; following the model config "
              f"as open_clip does (use the '-quickgelu' model name to change it)", file=sys.stderr)


def convert(model: str, pretrained: str, dst: str, model_config_path: str | None = None,
            dtype: str | None = None, overwrite: bool = False, progress: bool = True) -> None:
    model = model.replace("/", "-")  # as open_clip.create_model cleans names
    if model_config_path:
        register_model_config(model, model_config_path)
    oc_cfg = model_config(model)
    cfg = override_precision(ClipConfig.from_open_clip(oc_cfg), None, dtype, ("vision", "text"))
    checkpoint, tag_cfg = resolve_pretrained(model, pretrained)
    _check_tag_activation(model, oc_cfg, tag_cfg)
    params = convert_source(open_file(checkpoint), cfg, progress)
    preprocess = preprocess_config(cfg, tag_cfg)
    with tempfile.TemporaryDirectory() as side:
        files = write_side_files(side, oc_cfg, preprocess, model, pretrained)
        write_model_dir(dst, KIND, cfg.to_dict(), params, extra_files=files, overwrite=overwrite)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="open_clip model name, e.g. ViT-bigG-14")
    p.add_argument("--pretrained", required=True, help="open_clip pretrained tag or a local state-dict file")
    p.add_argument("--model-config", default=None, help="open_clip model config JSON registered under --model")
    return cli.add_output_args(p)


def main(argv=None):
    args = parser().parse_args(argv)
    convert(args.model, args.pretrained, args.dst, args.model_config, args.dtype, args.overwrite,
            progress=not args.quiet)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    cli.run(main)
