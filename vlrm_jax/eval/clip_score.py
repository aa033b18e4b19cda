"""CLIPScore and RefCLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric
for Image Captioning").

    CLIP-S(c, v)       = w * max(cos(c, v), 0),  w = 2.5
    RefCLIP-S(c, R, v) = harmonic mean of CLIP-S(c, v) and max(max_{r in R} cos(c, r), 0)

means over the images. The texts carry the paper's prompt prefix ("A photo depicts", as its
released code embeds candidates and references); `python -m vlrm_jax.evaluate --clipscore-prefix ""`
drops it, as the shapes world does, whose CLIP knows only its own language. The numbers come from
the evaluation CLIP (the paper's ViT-g-14), not the ViT-B/32 of Hessel et al., so they are not
comparable with published CLIP-S figures of other CLIPs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

WEIGHT = 2.5
PREFIX = "A photo depicts"


def with_prefix(texts: Sequence[str], prefix: str = PREFIX) -> list[str]:
    return [f"{prefix} {t}".strip() if prefix else t for t in texts]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clip_scores(caption_emb: np.ndarray, image_emb: np.ndarray) -> np.ndarray:
    """(N,) per-caption CLIP-S of caption i with image i."""
    if caption_emb.shape != image_emb.shape:
        raise ValueError(f"caption_emb {caption_emb.shape} and image_emb {image_emb.shape} must pair row by row")
    cos = np.sum(_unit(caption_emb) * _unit(image_emb), axis=-1)
    return WEIGHT * np.maximum(cos, 0.0)


def ref_clip_scores(caption_emb: np.ndarray, image_emb: np.ndarray, reference_emb: np.ndarray,
                    reference_image: Sequence[int]) -> np.ndarray:
    """(N,) per-caption RefCLIP-S; reference row j belongs to image reference_image[j]. An image
    without references gets NaN (left out of the mean by `clip_score_summary`)."""
    owner = np.asarray(reference_image, np.int64)
    if len(owner) != len(reference_emb):
        raise ValueError(f"{len(reference_emb)} reference embeddings but {len(owner)} owners")
    clip_s = clip_scores(caption_emb, image_emb)
    cos = np.sum(_unit(caption_emb)[owner] * _unit(reference_emb), axis=-1)  # each ref with its image's caption
    best = np.full(len(caption_emb), -np.inf)
    np.maximum.at(best, owner, cos)
    text_side = np.maximum(best, 0.0)
    total = clip_s + text_side
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(total > 0, 2 * clip_s * text_side / np.where(total > 0, total, 1.0), 0.0)
    return np.where(np.isfinite(best), out, np.nan)


def clip_score_summary(caption_emb, image_emb, reference_emb=None, reference_image=None) -> dict[str, float]:
    """{"clipscore": mean CLIP-S, "refclipscore": mean RefCLIP-S over images with references}."""
    out = {"clipscore": float(np.mean(clip_scores(caption_emb, image_emb)))}
    if reference_emb is not None and len(reference_emb):
        ref = ref_clip_scores(caption_emb, image_emb, reference_emb, reference_image)
        out["refclipscore"] = float(np.nanmean(ref))
    return out
