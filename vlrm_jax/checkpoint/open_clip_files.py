"""The files an OpenCLIP model folder carries beside its weights, written by `convert.open_clip`
and by the shapes world's CLIP stage alike:

    open_clip_config.json  {"model_cfg", "preprocess_cfg", "model_name", "pretrained"}: open_clip's
                           own `local-dir:` layout, so `open_clip.get_tokenizer("local-dir:DIR")`
                           rebuilds the tokenizer offline
    preprocess.json        the eval transform (the arguments of vlrm_jax.data.OpenClipPreprocessor)
"""
from __future__ import annotations

import json
import os

OPEN_CLIP_CONFIG_FILE = "open_clip_config.json"
PREPROCESS_FILE = "preprocess.json"


def preprocess_config(cfg, tag_cfg: dict) -> dict:
    """open_clip's eval preprocessing for this model: PreprocessCfg defaults, then the pretrained
    tag's values, then the model's image size (as create_model sets it)."""
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    merged = merge_preprocess_dict(PreprocessCfg(), tag_cfg)
    merged["size"] = list(cfg.vision.image_size)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in merged.items()}


def preprocessor_kwargs(open_clip_preprocess: dict) -> dict:
    """open_clip's preprocess keys -> vlrm_jax.data.OpenClipPreprocessor's arguments."""
    p = open_clip_preprocess
    return dict(image_size=p["size"], mean=p["mean"], std=p["std"], resize_mode=p["resize_mode"],
                interpolation=p["interpolation"], fill_color=p["fill_color"])


def _write_json(folder: str, name: str, data: dict) -> str:
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    return path


def write_side_files(folder: str, oc_cfg: dict, preprocess: dict, model_name: str, pretrained: str) -> list[str]:
    """The open_clip model config and the preprocessing a model folder carries beside its weights."""
    return [
        _write_json(folder, OPEN_CLIP_CONFIG_FILE, {"model_cfg": oc_cfg, "preprocess_cfg": preprocess,
                                                     "model_name": model_name, "pretrained": pretrained}),
        _write_json(folder, PREPROCESS_FILE, preprocessor_kwargs(preprocess)),
    ]
