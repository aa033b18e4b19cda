"""Which files are images, how they are named and read: one rule for captioning and evaluation.

`python -m vlrm_jax.caption`, `python -m vlrm_jax.evaluate` (an image folder as --dataset) and
`FolderSource` list and read a folder the same way, so a caption file written by one names the
images the other reads:

- A folder is searched recursively for files whose extension is in `IMAGE_EXTENSIONS` (any case).
  A glob pattern takes every file it matches, whatever its extension: the user named them.
- An image's key is its path relative to the folder (for a glob: to the glob's fixed leading
  folders, `glob_root`), with "/" separators. Keys are sorted.
- Every file is decoded by `decode.decode_image` with `decode_options(min_side)`; the default
  `MIN_SIDE` keeps every image that decodes. Bad files are skipped and counted, never fatal.
- Captions are generated on the centre crop by default (`CENTER_CROP`, see there).
"""
from __future__ import annotations

import glob
import os
from typing import Sequence

from vlrm_jax.data.decode import DecodeOptions

# Formats PIL reads without plug-ins; GIF and TIFF give their first frame.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Caption and evaluate keep every image that decodes: a CLIP Recall over a folder is computed on
# the images the user gave, not on a silently smaller set. `--min-size N` raises the bar in both.
MIN_SIDE = 1

# Caption the centre crop (shortest side resized to 224, then cropped), not the whole frame.
# The paper's number is CLIP Recall on MS-COCO (mostly 640x480): the judging CLIP embeds the
# centre crop (open_clip's eval transform), and the paper captions that same crop (preprocess.py),
# so a caption describes what the judge sees, not the cut-off sides it cannot be checked against.
# The shapes world's demo and the trainer's evaluation hook report their numbers this way too.
# `--no-center-crop` captions the whole frame squashed to 224x224 (transformers' processor).
CENTER_CROP = True


def decode_options(min_side: int = MIN_SIDE) -> DecodeOptions:
    """The decoder settings of caption and evaluate."""
    if min_side < 1:
        raise ValueError(f"min_side must be >= 1, got {min_side}")
    return DecodeOptions(min_side=min_side)


def _normalized_extensions(extensions: Sequence[str]) -> tuple[str, ...]:
    return tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)


def list_folder(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                follow_links: bool = False) -> list[str]:
    """Sorted keys ("/"-separated paths relative to `root`) of the files under `root` (recursive)
    whose extension is in `extensions`."""
    root = os.fspath(root)
    exts = _normalized_extensions(extensions)
    keys = []
    for dirpath, _, files in os.walk(root, followlinks=follow_links):
        rel = os.path.relpath(dirpath, root)
        for name in files:
            if os.path.splitext(name)[1].lower() in exts:
                keys.append(name if rel == "." else os.path.join(rel, name).replace(os.sep, "/"))
    return sorted(keys)


def glob_root(pattern: str) -> str:
    """The fixed leading folders of a glob pattern: `photos/**/*.jpg` -> `photos`, `*.png` -> `.`.
    The last part always names files, so a plain file path gives its folder."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or (os.sep if pattern.startswith(os.sep) else ".")


def _relative_key(path: str, root: str) -> str:
    return os.path.normpath(os.path.relpath(path, root)).replace(os.sep, "/")


def find_images(spec: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[str, list[str]]:
    """(root, sorted keys) of a folder or a glob pattern; FileNotFoundError when nothing is found."""
    if os.path.isdir(spec):
        keys = list_folder(spec, extensions)
        if not keys:
            raise FileNotFoundError(f"{spec!r}: no image files (extensions {', '.join(extensions)}) "
                                    "in this folder or below")
        return spec, keys
    root = glob_root(spec)
    keys = sorted(_relative_key(p, root) for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    if not keys:
        raise FileNotFoundError(f"{spec!r}: no such folder, and no file matches it as a glob pattern")
    return root, keys


def list_images(spec: str) -> list[str]:
    """The image paths of a folder or a glob pattern, sorted by key (see `find_images`)."""
    root, keys = find_images(spec)
    return [os.path.normpath(os.path.join(root, key)) for key in keys]
