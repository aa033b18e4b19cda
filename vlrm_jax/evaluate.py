"""Evaluation of captioners: CLIP Recall as the paper measures it (MS-COCO Karpathy test, OpenCLIP
ViT-g-14), with a second retriever, CLIPScore, the reference metrics, CHAIR and caption statistics.

    python -m vlrm_jax.evaluate --model DIR --clip DIR --dataset tfds:coco_captions/test --out DIR
    python -m vlrm_jax.caption --model DIR --images photos/ --out captions.jsonl
    python -m vlrm_jax.evaluate --clip DIR --dataset photos/ --captions captions.jsonl --out DIR
    python -m vlrm_jax.evaluate --clip DIR --retriever ITM_DIR --dataset tfds:coco_captions/test \
        --compare base/ vlrm/ vlrm_rs/ other.jsonl --out DIR

--dataset is `tfds:NAME/SPLIT` (prepared under --data-dir; nothing is downloaded: an unprepared
dataset is an error that says how to prepare it) or an image folder (reference captions are read
from DIR/captions.jsonl when it has "file" and "full" or "captions" fields, annotated object
classes from its "objects" field).

A folder is listed and read as the caption command does (vlrm_jax/data/image_files.py): every
.jpg .jpeg .png .webp .bmp .gif .tif .tiff below it, keyed by its path relative to the folder;
every image that decodes counts, unless `--min-size N` skips smaller ones; captions are generated
on the centre crop (`--no-center-crop`: the whole frame). So the caption command's output for a
folder is a valid --captions file for it, and so is this command's own OUT/captions.jsonl. A
captions file must give a caption for every image that decodes (the first row of an image wins);
one whose keys name no image at all is refused with an example key of each side.

Metrics per row (REF: the references themselves; then each model), one key each in metrics.json:
  R@1 R@5 R@10 MRR mean_rank   text-to-image retrieval with --clip (the paper's CLIP Recall)
  retriever_R@k retriever_MRR  the same with --retriever (another CLIP, or BLIP2-ITM's ITC head)
  clipscore refclipscore       Hessel et al. 2021 with --clip
  bleu4 meteor rouge_l cider   against the references, pycocoevalcap (CIDEr-D; Java for its
                               tokenizer and METEOR: without Java, METEOR is left out and said so)
  chair_s chair_i coverage     object hallucination (Rohrbach et al. 2018) where objects are annotated
  length vocabulary distinct_1 distinct_2 repeated_content_word at_length_limit bad_phrase
A metric a row cannot have is left out ("-" in the table) and the notes say why.

Writes OUT/captions.jsonl (file, caption; with --compare OUT/captions/NAME.jsonl per model),
OUT/metrics.json ({dataset, images, skipped, models, rows: {row: {metric: value}}, notes}),
OUT/metrics.md (the table), with --compare OUT/compare.png (R@1 against CHAIR-i), and prints the
table. Warnings (e.g. skipped images) and a progress bar (`--quiet`: none) go to stderr;
`--verbose` adds the libraries' INFO logs and pycocoevalcap's own output.
"""
from __future__ import annotations

import argparse
import dataclasses
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
        self._objects = {}
        path = os.path.join(self.root, "captions.jsonl")
        if os.path.exists(path):
            with open(path) as f:
                for row in map(json.loads, f):
                    self._references[row["file"]] = row.get("captions") or ([row["full"]] if "full" in row else [])
                    if "objects" in row:
                        self._objects[row["file"]] = [str(o) for o in row["objects"]]

    def extras(self, i: int):
        out = {"captions": self._references.get(self.key(i), [])}
        if self._objects:  # annotated objects (CHAIR): the folder gives them for every image or for none
            out["objects"] = self._objects.get(self.key(i), [])
        return out


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


def _entries(args) -> list[tuple[str, str]]:
    """(row name, model folder or captions file) of each model the command scores."""
    if args.compare:
        names, out = set(), []
        for path in args.compare:
            if not os.path.exists(path):
                raise FileNotFoundError(f"--compare {path}: no such captioner folder or captions file")
            base = os.path.basename(os.path.normpath(path))
            name = base[: -len(".jsonl")] if base.endswith(".jsonl") else base
            stem, k = name, 2
            while name in names or name == "REF":
                name, k = f"{stem}-{k}", k + 1
            names.add(name)
            out.append((name, path))
        return out
    return [("model", args.captions or args.model)]


def _is_captions_file(path: str) -> bool:
    return os.path.isfile(path)


def run(args) -> dict:
    from vlrm_jax.eval import report
    from vlrm_jax.eval.clip_eval import collect

    source = open_source(args.dataset, args.data_dir, args.min_size)
    entries = _entries(args)
    captions = {name: captions_for(path, source, args.dataset) for name, path in entries if _is_captions_file(path)}
    os.makedirs(args.out, exist_ok=True)  # an unusable --out fails before the work, not after
    from vlrm_jax import Captioner, ClipModel  # jax once the inputs are known to be usable
    from vlrm_jax.eval.retrievers import load_retriever

    from vlrm_jax.data.decode import SkipCounter
    from vlrm_jax.generate import GenerationConfig

    clip = ClipModel.load(args.clip)
    retrievers = [load_retriever(args.retriever)] if args.retriever else []
    generation = dataclasses.asdict(GenerationConfig.paper_inference(no_repeat_ngram_size=args.no_repeat_ngram_size))
    rows, notes, first = {}, [], None
    for name, path in entries:
        captioner = None if name in captions else Captioner.load(path, dtype=args.dtype)
        data = collect(source, clip, captioner, captions.get(name), batch_size=args.batch_size,
                       generation=generation, center_crop=args.center_crop, limit=args.limit,
                       progress=not args.quiet, captions_name=path, retrievers=retrievers, features_of=first)
        if first is None:  # the images' skips, counted and warned about once however many models
            skipped, skip_summary = source.skips.counts, source.skips.summary()
            source.skips = SkipCounter(source.skips.name, examples_per_reason=0)
        got, said = report.score(clip, data, name, retriever=retrievers[0] if retrievers else None,
                                 clipscore_prefix=args.clipscore_prefix, include_ref=first is None,
                                 verbose=args.verbose)
        rows.update(got)
        notes += [n for n in said if n not in notes]
        captions_path = os.path.join(args.out, "captions.jsonl" if not args.compare else f"captions/{name}.jsonl")
        os.makedirs(os.path.dirname(captions_path), exist_ok=True)
        write_captions(captions_path, ({"file": key, "caption": text} for key, text in zip(data.keys, data.captions)))
        first = first or data
    meta = {"dataset": args.dataset, "images": len(first.keys), "skipped": skipped,
            "models": dict(entries), "clip": args.clip}
    if retrievers:
        meta["retriever"] = {"folder": args.retriever, "kind": retrievers[0].kind}
    report.write_report(args.out, rows, notes, meta)
    print("\n".join(report.table_lines(rows)))
    for note in notes:
        print(f"note: {note}")
    wrote = f"{args.out}/metrics.json, metrics.md"
    if args.compare:
        if report.compare_figure(rows, os.path.join(args.out, "compare.png")):
            wrote += ", compare.png"
        else:
            print("note: no compare.png: no row has CHAIR-i (no object annotations, or no object named)")
    print(f"{len(first.keys)} images; {skip_summary}; wrote {wrote}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="captioner folder (omit with --captions)")
    p.add_argument("--clip", required=True, help="OpenCLIP folder (convert.open_clip output)")
    p.add_argument("--dataset", required=True, help="tfds:NAME/SPLIT or an image folder")
    p.add_argument("--data-dir", default=None, help="TFDS data dir")
    p.add_argument("--captions", default=None, help="captions .jsonl (file, caption) instead of generating")
    p.add_argument("--compare", nargs="+", default=None, metavar="MODEL_OR_CAPTIONS",
                   help="score several captioner folders and/or captions files in one table (rows named by "
                        "folder / file name); writes OUT/compare.png (R@1 against CHAIR-i) where CHAIR applies")
    p.add_argument("--retriever", default=None, metavar="DIR",
                   help="a second retriever for recall (retriever_R@k): a converted OpenCLIP folder, or a "
                        "BLIP2-ITM folder ranking with its contrastive (ITC) head")
    p.add_argument("--clipscore-prefix", default=None, metavar="TEXT",
                   help='prompt before each text for CLIPScore (default "A photo depicts", as Hessel et al.; '
                        '"": none)')
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--center-crop", action=argparse.BooleanOptionalAction, default=CENTER_CROP,
                   help="caption the centre crop, as the caption command does (default: on; "
                        "--no-center-crop: the whole frame, transformers' default)")
    p.add_argument("--min-size", type=int, default=MIN_SIDE, metavar="N",
                   help=f"skip images whose shorter side is under N pixels (default {MIN_SIDE}: every image that decodes)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=2, metavar="N",
                   help="the beam search's ban on repeated word n-grams (default 2, the paper's; 0: none, as "
                        "the shapes world's captions need)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="also the libraries' INFO logs (orbax, absl, jax, TFDS)")
    args = p.parse_args(argv)
    if sum(map(bool, (args.model, args.captions, args.compare))) != 1:
        p.error("give one of --model, --captions or --compare")
    if args.no_repeat_ngram_size < 0:
        p.error("--no-repeat-ngram-size must be >= 0")
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
