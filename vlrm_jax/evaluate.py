"""CLIP Recall of a captioner, as the paper measures it (MS-COCO Karpathy test, OpenCLIP ViT-g-14).

    python -m vlrm_jax.evaluate --model DIR --clip DIR --dataset tfds:coco_captions/test --out DIR
    python -m vlrm_jax.caption --model DIR --images photos/ --out captions.jsonl
    python -m vlrm_jax.evaluate --clip DIR --dataset photos/ --captions captions.jsonl --out DIR

--dataset is `tfds:NAME/SPLIT` (prepared under --data-dir; nothing is downloaded: an unprepared
dataset is an error that says how to prepare it) or an image folder (reference captions are read
from DIR/captions.jsonl when it has "file" and "full" or "captions" fields).

A folder is listed and read as the caption command does (vlrm_jax/data/image_files.py): every
.jpg .jpeg .png .webp .bmp .gif .tif .tiff below it, keyed by its path relative to the folder;
every image that decodes counts, unless `--min-size N` skips smaller ones; captions are generated
on the centre crop (`--no-center-crop`: the whole frame). So the caption command's output for a
folder is a valid --captions file for it, and so is this command's own OUT/captions.jsonl. A
captions file must give a caption for every image that decodes (the first row of an image wins);
one whose keys name no image at all is refused with an example key of each side.

Writes OUT/captions.jsonl (file, caption) and OUT/metrics.json (rows REF and model: R@1, R@5, R@10,
MRR, mean_rank, length) and prints the table and a summary line. Warnings (e.g. skipped images) and
a progress bar (`--quiet`: none) go to stderr; `--verbose` adds the libraries' INFO logs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from vlrm_jax.data.image_files import CENTER_CROP, MIN_SIDE, decode_options
from vlrm_jax.data.sources import FolderSource
from vlrm_jax.eval.caption_file import match_captions, read_captions, write_captions
from vlrm_jax.eval.console import configure_logging


class FolderWithReferences(FolderSource):
    """An image folder whose captions.jsonl (if any) gives reference captions per file."""

    def __init__(self, root, **kwargs):
        super().__init__(root, **kwargs)
        self._references = {}
        path = os.path.join(self.root, "captions.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                for row in map(json.loads, f):
                    self._references[row["file"]] = row.get("captions") or ([row["full"]] if "full" in row else [])

    def extras(self, i: int):
        return {"captions": self._references.get(self.key(i), [])}


def open_source(spec: str, data_dir: str | None = None, min_size: int = MIN_SIDE):
    """The evaluation images of `tfds:NAME/SPLIT` or of an image folder, in a fixed order."""
    common = dict(shuffle=False, process_index=0, process_count=1, decode=decode_options(min_size))
    if spec.startswith("tfds:"):
        from vlrm_jax.data.tfds_source import TfdsSource  # tensorflow only when asked for

        name, _, split = spec[len("tfds:"):].partition("/")
        return TfdsSource(name, split or "test", data_dir=data_dir, **common)
    return FolderWithReferences(spec, name=spec, **common)


def captions_for(path: str, source, dataset: str) -> dict[str, str]:
    """The captions of a --captions file, keyed like the source's images."""
    keys = [source.key(int(i)) for i in source.order(0)]
    return match_captions(read_captions(path), keys, folder=getattr(source, "root", None),
                          captions_name=path, images_name=dataset)


def run(args) -> dict:
    from vlrm_jax.eval.clip_eval import collect, format_table, recall_table

    source = open_source(args.dataset, args.data_dir, args.min_size)
    captions = captions_for(args.captions, source, args.dataset) if args.captions else None
    os.makedirs(args.out, exist_ok=True)  # an unusable --out fails before the work, not after
    from vlrm_jax import Captioner, ClipModel  # jax once the inputs are known to be usable

    clip = ClipModel.load(args.clip)
    captioner = Captioner.load(args.model, dtype=args.dtype) if args.model else None
    data = collect(source, clip, captioner, captions, batch_size=args.batch_size, center_crop=args.center_crop,
                   limit=args.limit, progress=not args.quiet, captions_name=args.captions)
    rows = recall_table(clip, data, name="model")
    write_captions(os.path.join(args.out, "captions.jsonl"),
                   ({"file": key, "caption": text} for key, text in zip(data.keys, data.captions)))
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump({"dataset": args.dataset, "images": len(data.keys), "skipped": source.skips.counts, "rows": rows}, f, indent=2)
    print(format_table(rows))
    print(f"{len(data.keys)} images; {source.skips.summary()}; wrote {args.out}/metrics.json")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="captioner folder (omit with --captions)")
    p.add_argument("--clip", required=True, help="OpenCLIP folder (convert.open_clip output)")
    p.add_argument("--dataset", required=True, help="tfds:NAME/SPLIT or an image folder")
    p.add_argument("--data-dir", default=None, help="TFDS data dir")
    p.add_argument("--captions", default=None, help="captions .jsonl (file, caption) instead of generating")
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--center-crop", action=argparse.BooleanOptionalAction, default=CENTER_CROP,
                   help="caption the centre crop, as the caption command does (default: on; "
                        "--no-center-crop: the whole frame, transformers' default)")
    p.add_argument("--min-size", type=int, default=MIN_SIDE, metavar="N",
                   help=f"skip images whose shorter side is under N pixels (default {MIN_SIDE}: every image that decodes)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="also the libraries' INFO logs (orbax, absl, jax, TFDS)")
    args = p.parse_args(argv)
    if not args.model and not args.captions:
        p.error("give --model or --captions")
    if args.min_size < 1:
        p.error("--min-size must be >= 1")
    configure_logging(args.verbose)
    try:
        run(args)
    except (OSError, KeyError, ValueError) as e:
        # a KeyError's str() is its repr: print the message itself
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
