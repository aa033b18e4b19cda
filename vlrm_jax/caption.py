"""Caption a folder (or glob) of images with a converted or fine-tuned captioner.

    python -m vlrm_jax.caption --model DIR --images DIR_OR_GLOB --out FILE.jsonl [generation flags]

Defaults are the paper's inference settings (beam 5, no_repeat_ngram_size 2, 4 to 60 new tokens).
One JSON line per readable image: {"file", "caption", "token_ids"}. Unreadable images are
reported, counted by reason and skipped; the run never stops on one. Every image that decodes is
captioned, however small, unless `--min-size N` asks to skip those whose shorter side is under
N pixels (the training data's bar is 32). Batches have a fixed size
(the last one is padded), so one compilation serves the whole folder.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
from tqdm import tqdm

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_images(spec: str) -> list[str]:
    """A folder (searched recursively, by extension) or a glob pattern, sorted."""
    if os.path.isdir(spec):
        found = [os.path.join(root, f) for root, _, files in os.walk(spec) for f in files
                 if f.lower().endswith(IMAGE_EXTENSIONS)]
    else:
        found = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
    if not found:
        raise FileNotFoundError(f"--images {spec!r}: no image files found")
    return sorted(found)


def _batches(paths: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(paths), size):
        yield paths[i : i + size]


def caption_files(captioner, paths: list[str], out_path: str, batch_size: int, generation: dict,
                  center_crop: bool = False, workers: int = 4, progress: bool = True, min_size: int = 1):
    """Writes the JSON lines; returns the SkipCounter. Images whose shorter side is under
    `min_size` pixels are skipped as too_small (1: none is)."""
    from vlrm_jax.data.decode import DecodeOptions, SkipCounter, decode_image
    from vlrm_jax.data.preprocess import Blip2Preprocessor

    prep = Blip2Preprocessor(captioner.config.vision.image_size, center_crop=center_crop)
    skips = SkipCounter("images")
    options = DecodeOptions(min_side=min_size)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as out, ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(paths), unit="img", desc="caption", disable=not progress) as bar:
        for chunk in _batches(paths, batch_size):
            decoded = list(pool.map(lambda path: decode_image(path, options), chunk))
            good = []
            for path, d in zip(chunk, decoded):
                if d.ok:
                    good.append((path, d.image))
                    skips.ok()
                else:
                    skips.skip(d.reason, path, d.detail)  # logged by the counter
            bar.update(len(chunk))
            if not good:
                continue
            pixels = prep.batch([img for _, img in good])
            if len(good) < batch_size:  # pad to the compiled shape
                pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch_size - len(good), 0)])
            ids = captioner.generate(pixels, **generation)
            per_image = generation.get("num_return_sequences", 1)
            texts = captioner.decode(ids)
            for i, (path, _) in enumerate(good):
                for r in range(per_image):
                    j = i * per_image + r
                    row = {"file": path, "caption": texts[j], "token_ids": ids[j][ids[j] != captioner.config.text.pad_token_id].tolist()}
                    out.write(json.dumps(row) + "\n")
    return skips


def main(argv=None) -> int:
    from vlrm_jax.generate import GenerationConfig

    paper = GenerationConfig.paper_inference()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="captioner folder (convert.blip2 output or a fine-tuned one)")
    p.add_argument("--images", required=True, help="folder (recursive) or glob pattern")
    p.add_argument("--out", required=True, help="output .jsonl")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--center-crop", action="store_true", help="shortest-side resize + centre crop before 224x224")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype of ViT and OPT")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--min-size", type=int, default=1, metavar="N",
                   help="skip images whose shorter side is under N pixels (default 1: caption every image that decodes)")
    p.add_argument("--quiet", action="store_true")
    for name, kind in [("max_new_tokens", int), ("min_new_tokens", int), ("num_beams", int), ("no_repeat_ngram_size", int),
                       ("length_penalty", float), ("num_return_sequences", int), ("temperature", float), ("top_k", int),
                       ("top_p", float)]:
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(paper, name))
    p.add_argument("--do-sample", action="store_true")
    args = p.parse_args(argv)
    if args.min_size < 1:
        p.error("--min-size must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = list_images(args.images)
        from vlrm_jax import Captioner

        captioner = Captioner.load(args.model, dtype=args.dtype)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    generation = dict(max_new_tokens=args.max_new_tokens, min_new_tokens=args.min_new_tokens, num_beams=args.num_beams,
                      no_repeat_ngram_size=args.no_repeat_ngram_size, length_penalty=args.length_penalty,
                      num_return_sequences=args.num_return_sequences, do_sample=args.do_sample,
                      temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    skips = caption_files(captioner, paths, args.out, args.batch_size, generation, args.center_crop,
                          progress=not args.quiet, min_size=args.min_size)
    bar = f"minimum size {args.min_size} px (--min-size)" if args.min_size > 1 else "no minimum size"
    print(f"captioned {skips.seen - skips.total} of {len(paths)} images -> {args.out}; {skips.summary()}; {bar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
