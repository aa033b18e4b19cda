"""Every metric of the evaluation command for each row (REF and the models), and the one table that
shows them: the terminal, OUT/metrics.json (one plain key per metric) and OUT/metrics.md.

Rows: REF holds the dataset's own reference captions, scored where a score of references makes
sense (recall, CLIPScore, CHAIR against the other references, statistics); a model row holds one
caption per image. A metric a row cannot have is absent from it, and one that is undefined on the data (CHAIR-i of
captions that name no object) is None; both show "-", never a zero, and the notes say why.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from vlrm_jax.eval.clip_eval import EvalSet, recall_table
from vlrm_jax.eval.recall import clip_recall

# Row order of the table: the metric names as metrics.json spells them, with their groups.
GROUPS = (
    ("retrieval (paper's CLIP)", ("R@1", "R@5", "R@10", "MRR", "mean_rank")),
    ("retrieval (second retriever)", ("retriever_R@1", "retriever_R@5", "retriever_R@10", "retriever_MRR")),
    ("CLIPScore", ("clipscore", "refclipscore")),
    ("against the references", ("bleu4", "meteor", "rouge_l", "cider")),
    ("hallucination", ("chair_s", "chair_i", "coverage")),
    ("caption statistics", ("length", "vocabulary", "distinct_1", "distinct_2", "repeated_content_word",
                            "at_length_limit", "bad_phrase")),
)
METRICS = tuple(m for _, names in GROUPS for m in names)


def _retriever_rows(retriever, data: EvalSet, names: Sequence[str]) -> dict[str, dict[str, float]]:
    images = data.image_features[retriever.name]
    rows = {}
    refs = [(i, t) for i, texts in enumerate(data.references) for t in texts]
    if refs and "REF" in names:
        got = clip_recall(retriever.text_features([t for _, t in refs]), images,
                          text_to_image=np.array([i for i, _ in refs]))
        rows["REF"] = got
    for name in names:
        if name != "REF":
            rows[name] = clip_recall(retriever.text_features(data.captions), images)
    return {row: {f"retriever_{k}": v for k, v in got.items() if k != "mean_rank"} for row, got in rows.items()}


def _clip_scores(clip, data: EvalSet, name: str, prefix: str, include_ref: bool) -> dict[str, dict[str, float]]:
    from vlrm_jax.eval.clip_eval import embed_texts
    from vlrm_jax.eval.clip_score import clip_score_summary, clip_scores, with_prefix

    refs = [(i, t) for i, texts in enumerate(data.references) for t in texts]
    ref_emb = None
    if refs:
        key = f"clipscore references, prefix {prefix!r}"
        if key not in data.reference_emb:
            data.reference_emb[key] = embed_texts(clip, with_prefix([t for _, t in refs], prefix))
        ref_emb = data.reference_emb[key]
    owner = np.array([i for i, _ in refs], np.int64)
    rows = {name: clip_score_summary(embed_texts(clip, with_prefix(data.captions, prefix)), data.image_emb,
                                     ref_emb, owner)}
    if refs and include_ref:
        rows["REF"] = {"clipscore": float(np.mean(clip_scores(ref_emb, data.image_emb[owner])))}
    return rows


def _chair_rows(data: EvalSet, name: str, vocab, include_ref: bool) -> dict[str, dict[str, float]]:
    from vlrm_jax.eval.chair import chair

    rows = {name: chair(data.captions, data.objects, vocab, reference_captions=data.references)}
    # REF: each reference judged against the annotations and the image's other references
    flat = [(i, j) for i, texts in enumerate(data.references) for j in range(len(texts))]
    if flat and include_ref:
        rows["REF"] = chair([data.references[i][j] for i, j in flat], [data.objects[i] for i, _ in flat], vocab,
                            reference_captions=[data.references[i][:j] + data.references[i][j + 1:] for i, j in flat])
    return {row: {k: got[k] for k in ("chair_s", "chair_i", "coverage")} for row, got in rows.items()}


def _statistics(data: EvalSet, name: str, include_ref: bool) -> dict[str, dict[str, float | None]]:
    from vlrm_jax.eval.caption_stats import caption_statistics

    rows = {name: caption_statistics(data.captions, at_length_limit=data.at_limit)}
    refs = [t for texts in data.references for t in texts]
    if refs and include_ref:
        rows["REF"] = caption_statistics(refs)
    for row in rows.values():
        row["length"] = row.pop("mean_length")
        if row["at_length_limit"] is None:
            del row["at_length_limit"]
    return rows


def score(clip, data: EvalSet, name: str = "model", *, retriever=None, clipscore_prefix: str | None = None,
          chair_vocab=None, include_ref: bool = True, verbose: bool = False) -> tuple[dict[str, dict], list[str]]:
    """({"REF": {...}, name: {...}}, notes): every metric this data allows, and why any is missing.
    include_ref=False: the model's row alone (the REF row of the same data is already known)."""
    from vlrm_jax.eval.clip_score import PREFIX
    from vlrm_jax.eval.reference_metrics import reference_scores

    rows: dict[str, dict] = {}
    notes: list[str] = []

    def merge(more: dict[str, dict]) -> None:
        for row, values in more.items():
            rows.setdefault(row, {}).update(values)

    merge(recall_table(clip, data, name=name, include_ref=include_ref))
    if retriever is not None:
        merge(_retriever_rows(retriever, data, list(rows)))
    merge(_clip_scores(clip, data, name, PREFIX if clipscore_prefix is None else clipscore_prefix, include_ref))
    has_refs = any(data.references)
    if has_refs:
        ref = reference_scores(data.captions, data.references, verbose=verbose)
        merge({name: ref.scores})
        notes += ref.notes
    else:
        notes.append("no reference captions: REF, RefCLIPScore, BLEU-4, METEOR, ROUGE-L and CIDEr-D not computed")
    if data.objects is None:
        notes.append("no object annotations: CHAIR not computed (TFDS coco_captions has them; an image "
                     "folder's captions.jsonl may give \"objects\": [class, ...] per file)")
    else:
        if chair_vocab is None:
            from vlrm_jax.eval.chair import coco_vocabulary

            chair_vocab = coco_vocabulary()
        merge(_chair_rows(data, name, chair_vocab, include_ref))
    merge(_statistics(data, name, include_ref))
    if data.at_limit is None:
        notes.append("captions read from a file: at_length_limit (stopped without EOS) is unknown")
    ordered = {row: nan_as_none({k: values[k] for k in METRICS if k in values}) for row, values in rows.items()}
    return {"REF": ordered.pop("REF"), **ordered} if "REF" in ordered else ordered, notes


def nan_as_none(values: dict) -> dict:
    """NaN -- undefined where there is nothing to count (CHAIR-i of captions naming no object) --
    as None: null in metrics.json, "-" in the tables."""
    return {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in values.items()}


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{value:.4f}"


def table_lines(rows: dict[str, dict], markdown: bool = False) -> list[str]:
    """Metrics down, rows across: one line per metric any row has."""
    names = list(rows)
    present = [m for m in METRICS if any(m in r for r in rows.values())]
    if markdown:
        lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        lines += ["| " + m + " | " + " | ".join(_cell(rows[n].get(m)) for n in names) + " |" for m in present]
        return lines
    width = max(11, *(len(n) + 2 for n in names))
    lines = [f"{'':22s}" + "".join(f"{n:>{width}s}" for n in names)]
    lines += [f"{m:22s}" + "".join(f"{_cell(rows[n].get(m)):>{width}s}" for n in names) for m in present]
    return lines


def write_report(out: str, rows: dict[str, dict], notes: list[str], meta: dict) -> None:
    """OUT/metrics.json ({**meta, "rows": rows, "notes": notes}) and OUT/metrics.md."""
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({**meta, "rows": rows, "notes": notes}, f, indent=2)
    with open(os.path.join(out, "metrics.md"), "w") as f:
        f.write(f"# {meta.get('dataset', 'evaluation')}: {meta.get('images', '?')} images\n\n")
        f.write("\n".join(table_lines(rows, markdown=True)) + "\n")
        if notes:
            f.write("\n" + "\n".join(f"- {n}" for n in notes) + "\n")


def compare_figure(rows: dict[str, dict], path: str) -> bool:
    """R@1 against CHAIR-i, a point per row: False (nothing written) where no row has CHAIR-i."""
    points = [(n, r["chair_i"], r["R@1"]) for n, r in rows.items()
              if r.get("chair_i") is not None and r.get("R@1") is not None]
    if not points:
        return False
    from pathlib import Path

    from vlrm_jax.figure import saved_figure

    with saved_figure(Path(path), figsize=(5, 4)) as (_, ax):
        for n, x, y in points:
            ax.scatter([x], [y], color="grey" if n == "REF" else None)
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("CHAIR-i (hallucinated object mentions, lower is better)")
        ax.set_ylabel("R@1 (text-to-image retrieval)")
        ax.grid(alpha=0.3)
    return True
