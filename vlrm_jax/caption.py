"""Caption a folder (or glob) of images with a converted or fine-tuned captioner.

    python -m vlrm_jax.caption --model DIR --images DIR_OR_GLOB --out FILE.jsonl [generation flags]

Defaults are the paper's inference settings (beam 5, no_repeat_ngram_size 2, 4 to 60 new tokens)
on the centre crop of each image, as evaluate captions it (`--no-center-crop`: the whole frame
squashed to the model's size; why the crop is the default: vlrm_jax/data/image_files.py).

Output: one JSON line per readable image (per returned sequence), {"file", "caption", "token_ids"}.
"file" is the image's path relative to --images (for a glob, relative to its fixed leading
folders: `photos` for `photos/**/*.jpg`), with "/" separators: the key that
`python -m vlrm_jax.evaluate --dataset FOLDER --captions FILE.jsonl` looks up.

Images are found and read as evaluate and `FolderSource` do (vlrm_jax/data/image_files.py): a
folder is searched recursively for .jpg .jpeg .png .webp .bmp .gif .tif .tiff files (any case); a
glob takes every file it matches. Unreadable images are reported, counted by reason and skipped;
the run never stops on one. Every image that decodes is captioned, however small, unless
`--min-size N` skips those whose shorter side is under N pixels (the training data's bar is 32).
Batches have a fixed size (the last one is padded), so one compilation serves the whole folder.

The terminal shows warnings (e.g. the first skipped files of each reason), a progress bar that
advances as each batch's captions are generated (`--quiet`: none) and a summary line;
`--verbose` adds the libraries' INFO logs (orbax, absl, jax).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator

import numpy as np

from vlrm_jax.data.image_files import CENTER_CROP, MIN_SIDE, decode_options, list_images
from vlrm_jax.data.sources import Batch, FolderSource, epoch_position
from vlrm_jax.eval.console import configure_logging, progress_bar

__all__ = ["caption_files", "caption_rows", "list_images", "main", "open_images"]


def open_images(spec: str, min_size: int = MIN_SIDE) -> FolderSource:
    """The images of a folder or glob in key order, decoded as evaluate decodes them."""
    return FolderSource.from_spec(spec, shuffle=False, process_index=0, process_count=1,
                                  decode=decode_options(min_size), name="images")


def caption_rows(captioner, batch: Batch, generation: dict) -> Iterator[dict]:
    """The output rows of one batch: its valid images only, each with every returned sequence."""
    ids = captioner.generate(batch.images, **generation)
    texts = captioner.decode(ids)
    per_image = generation.get("num_return_sequences", 1)
    pad = captioner.config.text.pad_token_id
    for b in np.flatnonzero(batch.valid):
        for r in range(per_image):
            j = b * per_image + r
            yield {"file": batch.keys[b], "caption": texts[j], "token_ids": ids[j][ids[j] != pad].tolist()}


def caption_files(captioner, source: FolderSource, out_path: str, batch_size: int, generation: dict, *,
                  center_crop: bool = CENTER_CROP, progress: bool = True):
    """Writes the JSON lines of every readable image of `source`; returns its SkipCounter."""
    from vlrm_jax.data.preprocess import Blip2Preprocessor

    prep = Blip2Preprocessor(captioner.config.vision.image_size, center_crop=center_crop)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    total = source.host_len
    # Bad files become padding slots: every batch has one shape, so generate compiles once.
    batches = source.batches(batch_size, transform=prep, drop_remainder=False)
    with open(out_path, "w") as out, progress_bar(total, "caption", progress) as bar:
        for batch in batches:
            if batch.valid.any():
                for row in caption_rows(captioner, batch, generation):
                    out.write(json.dumps(row) + "\n")
            bar.update(epoch_position(batch.state, total) - bar.n)
    return source.skips


def main(argv=None) -> int:
    from vlrm_jax.generate import GenerationConfig

    paper = GenerationConfig.paper_inference()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="captioner folder (convert.blip2 output or a fine-tuned one)")
    p.add_argument("--images", required=True,
                   help="folder (recursive) or glob pattern; the output's \"file\" keys are relative to it")
    p.add_argument("--out", required=True, help="output .jsonl")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--center-crop", action=argparse.BooleanOptionalAction, default=CENTER_CROP,
                   help="shortest-side resize + centre crop to the model's size, as evaluate does "
                        "(default: on; --no-center-crop squashes the whole frame)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype of ViT and OPT")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--min-size", type=int, default=MIN_SIDE, metavar="N",
                   help=f"skip images whose shorter side is under N pixels (default {MIN_SIDE}: caption every "
                        "image that decodes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="also the libraries' INFO logs (orbax, absl, jax)")
    for name, kind in [("max_new_tokens", int), ("min_new_tokens", int), ("num_beams", int), ("no_repeat_ngram_size", int),
                       ("length_penalty", float), ("num_return_sequences", int), ("temperature", float), ("top_k", int),
                       ("top_p", float)]:
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(paper, name))
    p.add_argument("--do-sample", action="store_true")
    args = p.parse_args(argv)
    if args.min_size < 1:
        p.error("--min-size must be >= 1")
    configure_logging(args.verbose)
    try:
        source = open_images(args.images, args.min_size)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)  # before the slow load
        from vlrm_jax import Captioner

        captioner = Captioner.load(args.model, dtype=args.dtype)
        captioner.tokenizer  # a folder without one fails here, not after generating
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    generation = dict(max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, num_beams=args.num_beams,
                      no_repeat_ngram_size=args.no_repeat_ngram_size, length_penalty=args.length_penalty,
                      num_return_sequences=args.num_return_sequences, do_sample=args.do_sample,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    skips = caption_files(captioner, source, args.out, args.batch_size, generation, center_crop=args.center_crop,
                          progress=not args.quiet)
    bar = f"minimum size {args.min_size} px (--min-size)" if args.min_size > 1 else "no minimum size"
    print(f"captioned {skips.seen - skips.total} of {len(source)} images -> {args.out}; {skips.summary()}; {bar}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
