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
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def _normalise(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n, dim), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} has non-finite values (rows {np.flatnonzero(~np.isfinite(x).all(1))[:5]})")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"{what} has all-zero rows, which have no direction: {np.flatnonzero(norms[:, 0] == 0)[:5]}")
    return x / norms


def retrieval_ranks(text_emb: np.ndarray, image_emb: np.ndarray,
                    text_to_image: Sequence[int] | np.ndarray | None = None,
                    chunk_size: int = 1024) -> np.ndarray:
    """1-based rank of each text's correct image (pessimistic ties), int64 (n_texts,).

    text_to_image[t] is the index of text t's image; None means text i <-> image i.
    """
    texts = _normalise(text_emb, "text_emb")
    images = _normalise(image_emb, "image_emb")
    if texts.shape[1] != images.shape[1]:
        raise ValueError(f"text_emb dim {texts.shape[1]} != image_emb dim {images.shape[1]}")
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
    for lo in range(0, n_text, chunk_size):
        hi = min(lo + chunk_size, n_text)
        scores = texts[lo:hi] @ images.T  # (chunk, n_image)
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
