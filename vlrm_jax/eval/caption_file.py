"""Caption files: JSON lines `{"file": KEY, "caption": TEXT, ...}`.

`python -m vlrm_jax.caption` writes them (with "token_ids"), `python -m vlrm_jax.evaluate` writes
OUT/captions.jsonl and reads one with --captions. KEY names an image the way its source does: for
a folder, the path relative to the folder with "/" separators; for TFDS, the image id.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence


def write_captions(path: str, rows: Iterable[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def read_captions(path: str) -> dict[str, str]:
    """KEY -> caption. With several rows for one image (--num-return-sequences), the first wins:
    the caption command writes the best beam first."""
    captions: dict[str, str] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, text = row["file"], row["caption"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}, line {number}: not a caption row "
                                 f'{{"file": ..., "caption": ...}} ({type(e).__name__}: {e})') from e
            captions.setdefault(str(key), str(text))
    if not captions:
        raise ValueError(f"{path}: no caption rows")
    return captions


def _key_in_folder(path: str, folder: str) -> str | None:
    """The key of `path` (from the working directory) in `folder`, or None when it lies outside."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    if rel == ".." or rel.startswith(".." + os.sep):
        return None
    return rel.replace(os.sep, "/")


def match_captions(captions: dict[str, str], image_keys: Sequence[str], *, folder: str | None = None,
                   captions_name: str = "the captions file", images_name: str = "the dataset") -> dict[str, str]:
    """The captions keyed like the images. In a folder, a row whose "file" is not a key but a path
    to one of its files (as given on a command line) counts as that file's. ValueError when no
    row names an image: the keys on both sides were made differently."""
    wanted = set(image_keys)
    matched = {key: text for key, text in captions.items() if key in wanted}
    if folder is not None:
        for key, text in captions.items():
            in_folder = _key_in_folder(key, folder)
            if in_folder in wanted:
                matched.setdefault(in_folder, text)
    if not matched:
        raise ValueError(
            f"no caption in {captions_name} names an image of {images_name}: its keys look like "
            f"{next(iter(captions))!r}, the images' like {image_keys[0]!r}. Keys are image paths "
            "relative to the image folder (what `python -m vlrm_jax.caption --images FOLDER` writes), "
            "or TFDS image ids")
    return matched
