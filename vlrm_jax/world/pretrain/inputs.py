"""World text and images as the models' inputs: token ids, pixels, frozen vision states."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx


def tokenizer_files(folder: Path) -> list[Path]:
    """The files `tokenizer.save_pretrained` wrote, to copy into a model folder."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file())


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def opt_ids(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[BOS] text [EOS], right-padded to the longest: int32 ids and mask (B, T)."""
    rows = [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts).input_ids]
    length = max(map(len, rows))
    out = np.full((len(rows), length), tokenizer.pad_token_id, np.int32)
    mask = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)], mask[i, :len(row)] = row, 1
    return out, mask


class WordPieceIds:
    """[CLS] text [SEP] ids of world text, memoised per word: world words are whole WordPiece
    tokens, so a text's ids are its words' ids. Several times faster than calling the tokenizer
    per batch; `check` compares against the tokenizer itself."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self._words: dict[str, list[int]] = {}

    def _word(self, word: str) -> list[int]:
        if word not in self._words:
            self._words[word] = self.tokenizer(word, add_special_tokens=False).input_ids
        return self._words[word]

    def encode(self, text: str) -> list[int]:
        ids = [i for w in re.findall(r"[^\W_]+|[^\w\s]|_", text.lower()) for i in self._word(w)]
        tok = self.tokenizer
        return [tok.cls_token_id] + ids[: self.max_length - 2] + [tok.sep_token_id]

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.full((len(texts), self.max_length), self.tokenizer.pad_token_id, np.int32)
        mask = np.zeros((len(texts), self.max_length), np.int32)
        for i, text in enumerate(texts):
            row = self.encode(text)
            ids[i, :len(row)], mask[i, :len(row)] = row, 1
        return ids, mask

    def check(self, texts: list[str]) -> None:
        want = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="np")
        ids, mask = self(texts)
        if not (np.array_equal(ids, want["input_ids"]) and np.array_equal(mask, want["attention_mask"])):
            raise AssertionError("memoised WordPiece ids differ from the tokenizer's")


def clip_pixels(images: np.ndarray, size: int) -> np.ndarray:
    """open_clip's eval transform with its default settings (what `preprocess_config` writes)."""
    from vlrm_jax.data.preprocess import open_clip_pixel_values

    return open_clip_pixel_values(list(images), image_size=size)


def blip2_pixels(images: np.ndarray, size: int) -> np.ndarray:
    from vlrm_jax.data.preprocess import blip2_pixel_values

    return blip2_pixel_values(list(images), size=size)


def chunked(module: nnx.Module, fn: Callable, chunk: int = 250) -> Callable:
    """(*arrays) -> fn(module, *arrays) as numpy, run over blocks of `chunk` rows by one compiled
    function: a frozen model over a whole split without holding its activations at once."""
    graphdef, state = nnx.split(module)
    run = jax.jit(lambda s, *xs: fn(nnx.merge(graphdef, s), *xs))
    return lambda *arrays: np.concatenate([np.asarray(run(state, *(a[k:k + chunk] for a in arrays)))
                                           for k in range(0, len(arrays[0]), chunk)])


def vision_states(vit: nnx.Module, pixels: np.ndarray) -> np.ndarray:
    """The frozen ViT's output for every image, computed once for a whole stage."""
    return chunked(vit, lambda m, p: m(p))(pixels)
