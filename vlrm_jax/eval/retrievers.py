"""Text-to-image retrievers for recall: a converted OpenCLIP folder, or a BLIP2-ITM folder ranking
with its contrastive (ITC) head.

The paper grades captions by OpenCLIP ViT-g-14 retrieval only, and VLRM-RS trains on that very
family; a second retriever of another family (`python -m vlrm_jax.evaluate --retriever DIR`) shows
whether a gain is the captions' or the grader's. Each retriever embeds images and texts apart
(N + T passes, not N x T); `vlrm_jax.eval.recall` ranks them, taking an ITC image's best score
over its query outputs as transformers' `Blip2ForImageTextRetrieval(use_image_text_matching_head=False)`
does.
"""
from __future__ import annotations

import os

import numpy as np

from vlrm_jax.checkpoint import kinds
from vlrm_jax.checkpoint import model_dir as md
from vlrm_jax.eval.clip_eval import embed_texts, in_text_batches


class ClipRetriever:
    """OpenCLIP: one embedding per image and per text (open_clip's eval transform: resize, centre crop)."""

    kind = "open_clip"

    def __init__(self, clip, name: str = "clip"):
        self.clip = clip
        self.name = name

    def image_features(self, images) -> np.ndarray:
        return self.clip.encode_image(self.clip.pixel_values(images))

    def text_features(self, texts: list[str]) -> np.ndarray:
        return embed_texts(self.clip, list(texts))


class ItcRetriever:
    """BLIP2-ITM's contrastive head: Q embeddings per image (the query outputs), one per text (the
    text-only Q-Former's [CLS]); images preprocessed as the captioner's evaluation does (centre crop)."""

    kind = kinds.BLIP2_ITM

    def __init__(self, itm, name: str = "itc", max_length: int | None = None, center_crop: bool = True):
        from vlrm_jax.data.preprocess import Blip2Preprocessor
        from vlrm_jax.rewards.retokenize import DEFAULT_ITM_MAX_LENGTH

        self.itm = itm
        self.name = name
        # texts as long as the reward's ITM sees them, within the Q-Former's positions
        self.max_length = max_length or min(DEFAULT_ITM_MAX_LENGTH, itm.config.qformer.max_position_embeddings)
        self._preprocess = Blip2Preprocessor(itm.config.vision.image_size, center_crop=center_crop)

    def image_features(self, images) -> np.ndarray:
        return self.itm.itc_image_features(self._preprocess.batch(images))

    def text_features(self, texts: list[str]) -> np.ndarray:
        from vlrm_jax.rewards.retokenize import itm_token_ids

        tokenizer = self.itm.tokenizer
        return in_text_batches(lambda t: self.itm.itc_text_features(*itm_token_ids(tokenizer, t, self.max_length)),
                               list(texts))


def load_retriever(folder: str, dtype: str | None = None):
    """The retriever a converted folder holds: OpenCLIP or BLIP2-ITM (ValueError for other kinds)."""
    kind = md.read_config(folder)["kind"]
    name = os.path.basename(os.path.normpath(folder))
    if kind == kinds.OPEN_CLIP:
        from vlrm_jax.clip_api import ClipModel

        return ClipRetriever(ClipModel.load(folder, dtype=dtype), name=name)
    if kind == kinds.BLIP2_ITM:
        from vlrm_jax.api import ItmScorer

        return ItcRetriever(ItmScorer.load(folder, dtype=dtype), name=name)
    raise ValueError(f"--retriever {folder} holds a {kind!r} model; a retriever is an OpenCLIP folder "
                     f"(convert.open_clip) or a BLIP2-ITM folder (convert.blip2 of blip2-itm-vit-g)")
