"""CLIP Recall of a captioner, as the paper measures it (MS-COCO Karpathy test, OpenCLIP ViT-g-14).

    python -m vlrm_jax.evaluate --model DIR --clip DIR --dataset tfds:coco_captions/test --out DIR
    python -m vlrm_jax.evaluate --clip DIR --dataset photos/ --captions captions.jsonl --out DIR

--dataset is `tfds:NAME/SPLIT` (prepared under --data-dir; nothing is downloaded) or an image
folder (reference captions are read from DIR/captions.jsonl when it has "file" and "full" or
"captions" fields). Writes OUT/captions.jsonl (file, caption) and OUT/metrics.json (rows REF and
model: R@1, R@5, R@10, MRR, mean_rank, length) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from vlrm_jax.data.decode import DecodeOptions
from vlrm_jax.data.sources import FolderSource


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


def open_source(spec: str, data_dir: str | None = None):
    common = dict(shuffle=False, process_index=0, process_count=1, decode=DecodeOptions(min_side=8))
    if spec.startswith("tfds:"):
        from vlrm_jax.data.tfds_source import TfdsSource  # tensorflow only when asked for

        name, _, split = spec[len("tfds:"):].partition("/")
        return TfdsSource(name, split or "test", data_dir=data_dir, **common)
    return FolderWithReferences(spec, **common)


def read_captions(path: str) -> dict[str, str]:
    with open(path) as f:
        return {row["file"]: row["caption"] for row in map(json.loads, f)}


def run(args) -> dict:
    from vlrm_jax import Captioner, ClipModel
    from vlrm_jax.eval.clip_eval import collect, format_table, recall_table

    source = open_source(args.dataset, args.data_dir)
    clip = ClipModel.load(args.clip)
    captioner = Captioner.load(args.model, dtype=args.dtype) if args.model else None
    captions = read_captions(args.captions) if args.captions else None
    data = collect(source, clip, captioner, captions, batch_size=args.batch_size, center_crop=not args.no_center_crop,
                   limit=args.limit, progress=not args.quiet)
    rows = recall_table(clip, data, name="model")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "captions.jsonl"), "w") as f:
        for key, text in zip(data.keys, data.captions):
            f.write(json.dumps({"file": key, "caption": text}) + "\n")
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
    p.add_argument("--no-center-crop", action="store_true", help="caption the uncropped image (transformers' default)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if not args.model and not args.captions:
        p.error("give --model or --captions")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
