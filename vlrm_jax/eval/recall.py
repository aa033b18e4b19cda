"""CLIP Recall: text-to-image retrieval scores of captions (the paper's Table 3 metric).

Each text is a query over all images; its rank is the 1-based position of its correct image when
images are sorted by cosine similarity. R@k = fraction of texts with rank <= k, MRR = mean of
1/rank, mean_rank = mean rank.

Ties (pessimistic rule): the correct image ranks below every other image with an equal score,
rank = #{images j : s_j >= s_correct}. A model that gives many images the same score (e.g.
identical or degenerate embeddings) therefore cannot gain from the tie; an optimistic or random
rule would reward it.

Scores are float32 dot products of L2-normalised embeddings, computed a chunk of texts at a time
(chunk x n_images), so 25000 texts x 5000 images needs about 20 MB at a time rather than 500 MB.
Every score of a row, including the correct one, comes from the same matrix product, so an
exact tie is seen as a tie.

An image may have several embeddings, (n_images, Q, dim): its score is the best of its Q cosines,
as BLIP2's contrastive (ITC) head scores a text against its Q query outputs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _normalise(x: np.ndarray, what: str, per_item: bool = False) -> np.ndarray:
    """L2-normalised rows of (n, dim), or of (n, Q, dim) where per_item allows several per item."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 and not (per_item and x.ndim == 3):
        shapes = "(n, dim) or (n, Q, dim)" if per_item else "(n, dim)"
        raise ValueError(f"{what} must be {shapes}, got shape {x.shape}")
    flat = x.reshape(-1, x.shape[-1])
    if not np.all(np.isfinite(flat)):
        raise ValueError(f"{what} has non-finite values (rows {np.flatnonzero(~np.isfinite(flat).all(1))[:5]})")
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{what} has all-zero rows, which have no direction: "
                         f"{np.flatnonzero((norms == 0).reshape(len(x), -1).any(1))[:5]}")
    return x / norms


def similarity(texts: np.ndarray, images: np.ndarray) -> np.ndarray:
    """(n_texts, n_images) of normalised texts (n_texts, dim) and images (n_images, [Q,] dim)."""
    if images.ndim == 2:
        return texts @ images.T
    return np.einsum("td,iqd->tiq", texts, images).max(axis=2)


def retrieval_ranks(text_emb: np.ndarray, image_emb: np.ndarray,
                    text_to_image: Sequence[int] | np.ndarray | None = None,
                    chunk_size: int = 1024) -> np.ndarray:
    """1-based rank of each text's correct image (pessimistic ties), int64 (n_texts,).

    text_to_image[t] is the index of text t's image; None means text i <-> image i.
    image_emb (n_images, dim), or (n_images, Q, dim): the best of an image's Q scores counts.
    """
    texts = _normalise(text_emb, "text_emb")
    images = _normalise(image_emb, "image_emb", per_item=True)
    if texts.shape[1] != images.shape[-1]:
        raise ValueError(f"text_emb dim {texts.shape[1]} != image_emb dim {images.shape[-1]}")
    n_text, n_image = len(texts), len(images)
    if text_to_image is None:
        if n_text != n_image:
            raise ValueError(f"{n_text} texts and {n_image} images: pass text_to_image to pair them")
        target = np.arange(n_text)
    else:
        target = np.asarray(text_to_image)
        if target.shape != (n_text,) or not np.issubdtype(target.dtype, np.integer):
            raise ValueError(f"text_to_image must be {n_text} integers, got {target.dtype} {target.shape}")
        if n_text and (target.min() < 0 or target.max() >= n_image):
            raise ValueError(f"text_to_image has indices outside [0, {n_image})")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    ranks = np.empty(n_text, np.int64)
    if images.ndim == 3:  # the (chunk, n_image, Q) scores stay as small as a 2-D chunk's
        chunk_size = max(1, chunk_size // images.shape[1])
    for lo in range(0, n_text, chunk_size):
        hi = min(lo + chunk_size, n_text)
        scores = similarity(texts[lo:hi], images)  # (chunk, n_image)
        correct = scores[np.arange(hi - lo), target[lo:hi]]
        ranks[lo:hi] = (scores >= correct[:, None]).sum(axis=1)  # counts the correct image itself
    return ranks


def clip_recall(text_emb: np.ndarray, image_emb: np.ndarray, ks: Sequence[int] = (1, 5, 10), *,
                text_to_image: Sequence[int] | np.ndarray | None = None,
                chunk_size: int = 1024) -> dict[str, float]:
    """Text-to-image retrieval: {"R@k" for k in ks, "MRR", "mean_rank"}.

    text_emb (n_texts, d), image_emb (n_images, d): any scale, L2-normalised here.
    text_to_image: image index of each text (several captions per image); None: text i <-> image i.
    """
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")
    ranks = retrieval_ranks(text_emb, image_emb, text_to_image, chunk_size)
    if len(ranks) == 0:
        raise ValueError("no texts to score")
    out = {f"R@{int(k)}": float(np.mean(ranks <= k)) for k in ks}
    out["MRR"] = float(np.mean(1.0 / ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out
