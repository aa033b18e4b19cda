"""CLIP Recall of a captioner on an image source: the paper's evaluation, and the trainer's hook.

For each image of the source: a caption (generated with the paper's beam-search settings on the
centre-cropped image, or read from a file), and the CLIP image embedding of the centre-cropped
image. Text-to-image retrieval of every caption among all images gives R@1/5/10, MRR and mean rank
(`clip_recall`, pessimistic ties). The REF row retrieves with the source's own reference captions
(COCO: 5 per image), when it has them.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Sequence

import numpy as np

from vlrm_jax.data.image_files import CENTER_CROP
from vlrm_jax.data.sources import epoch_position
from vlrm_jax.eval.console import progress_bar
from vlrm_jax.eval.recall import clip_recall

TEXT_BATCH = 256


@dataclasses.dataclass
class EvalSet:
    keys: list[str]
    image_emb: np.ndarray  # (N, D) CLIP image embeddings
    captions: list[str]  # one model caption per image ("" when none)
    references: list[list[str]]  # reference captions per image (may be empty lists)
    # the images' features under each further retriever (vlrm_jax.eval.retrievers), by its name
    image_features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # the object classes annotated per image (COCO's objects), None where the source has none
    objects: list[list[str]] | None = None
    # per caption: stopped at the length limit without EOS; None where unknown (a captions file)
    at_limit: list[bool] | None = None
    # text embeddings that depend on the references only (shared by passes over the same images,
    # so comparing models embeds them once), by what they are
    reference_emb: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _chunks(records: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for r in records:
        chunk.append(r)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _generate_captions(captioner, images, batch_size: int, generation: dict,
                       center_crop: bool) -> tuple[list[str], list[bool]]:
    """Captions and, per caption, whether it ran to the length limit without EOS."""
    from vlrm_jax.data.preprocess import Blip2Preprocessor

    pixels = Blip2Preprocessor(captioner.config.vision.image_size, center_crop=center_crop).batch(images)
    n = len(images)
    if n < batch_size:  # one compiled shape for every batch
        pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch_size - n, 0)])
    rollout = captioner.rollout(pixels, **generation)
    return captioner.decode(rollout.tokens)[:n], [not bool(f) for f in np.asarray(rollout.finished)[:n]]


def _captions_of(keys: list[str], captions: dict[str, str], captions_name: str) -> list[str]:
    missing = [k for k in keys if k not in captions]
    if missing:
        raise ValueError(f"{captions_name} has no caption for image {missing[0]!r} (it has {len(captions)} "
                         f"captions, e.g. for {next(iter(captions))!r}); it needs one for every image that "
                         "decodes: caption the same folder with the same --min-size")
    return [captions[k] for k in keys]


def collect(source, clip, captioner=None, captions: dict[str, str] | None = None, *, batch_size: int = 32,
            generation: dict | None = None, center_crop: bool = CENTER_CROP, limit: int | None = None,
            progress: bool = True, captions_name: str = "the captions file",
            retrievers: Sequence = (), features_of: EvalSet | None = None) -> EvalSet:
    """One pass over `source.records()`: CLIP image embeddings (and each further retriever's image
    features), captions (generated unless given by key), reference captions and annotated objects.
    Unreadable images are skipped and counted by the source. The progress bar counts the source's
    items (bad ones included) as their batch is done.

    features_of: an earlier pass over the same source and limit whose image features are reused
    (evaluating several models embeds the images once)."""
    from vlrm_jax.generate import GenerationConfig

    if captioner is None and captions is None:
        raise ValueError("need a captioner or a captions file")
    if generation is None:
        generation = dataclasses.asdict(GenerationConfig.paper_inference())
    out = EvalSet([], [], [], [], {r.name: [] for r in retrievers}, [], [])
    total = min(source.host_len, limit) if limit else source.host_len
    with progress_bar(total, "evaluate", progress) as bar:
        for chunk in _chunks(source.records(), batch_size):
            if limit:
                chunk = chunk[: max(0, limit - len(out.keys))]
                if not chunk:
                    break
            images = [r.image for r in chunk]
            keys = [r.key for r in chunk]
            if captions is not None:
                texts, at_limit = _captions_of(keys, captions, captions_name), None
            else:
                texts, at_limit = _generate_captions(captioner, images, batch_size, generation, center_crop)
            out.keys += keys
            out.captions += texts
            out.at_limit = None if at_limit is None or out.at_limit is None else out.at_limit + at_limit
            out.references += [list(r.extras.get("captions") or []) for r in chunk]
            objects = [r.extras.get("objects") for r in chunk]
            out.objects = None if None in objects or out.objects is None else out.objects + objects
            if features_of is None:
                out.image_emb.append(clip.encode_image(clip.pixel_values(images)))
                for r in retrievers:
                    out.image_features[r.name].append(r.image_features(images))
            bar.update(min(epoch_position(chunk[-1].state, source.host_len), total) - bar.n)
        if bar.n < total:  # bad files at the end, or --limit reached
            bar.update(total - bar.n)
    if not out.keys:
        raise ValueError(f"{getattr(source, 'name', 'source')}: no readable images")
    if features_of is not None:
        if features_of.keys != out.keys:
            raise ValueError("features_of is a pass over other images (another source or --limit)")
        out.image_emb, out.image_features = features_of.image_emb, features_of.image_features
        out.reference_emb = features_of.reference_emb
    else:
        out.image_emb = np.concatenate(out.image_emb)
        out.image_features = {name: np.concatenate(f) for name, f in out.image_features.items()}
    return out


def in_text_batches(embed, texts: list[str]) -> np.ndarray:
    """`embed` (a list of at most TEXT_BATCH texts -> (n, ...) array) over all texts, concatenated."""
    return np.concatenate([embed(texts[i : i + TEXT_BATCH]) for i in range(0, len(texts), TEXT_BATCH)])


def embed_texts(clip, texts: list[str]) -> np.ndarray:
    return in_text_batches(lambda batch: clip.encode_text(clip.tokenize(batch)), texts)


def recall_table(clip, data: EvalSet, name: str = "model", include_ref: bool = True) -> dict[str, dict[str, float]]:
    """{"REF": ..., name: ...}: recall rows plus mean caption length in words."""
    rows = {}
    refs = [(i, t) for i, texts in enumerate(data.references) for t in texts]
    if refs and include_ref:
        idx = np.array([i for i, _ in refs])
        ref_texts = [t for _, t in refs]
        rows["REF"] = dict(clip_recall(embed_texts(clip, ref_texts), data.image_emb, text_to_image=idx),
                           length=float(np.mean([len(t.split()) for t in ref_texts])))
    rows[name] = dict(clip_recall(embed_texts(clip, data.captions), data.image_emb),
                      length=float(np.mean([len(t.split()) for t in data.captions])))
    return rows


def format_table(rows: dict[str, dict[str, float | None]]) -> str:
    """Rows across, columns down the first row's order; a value a row lacks (or None) shows "-"."""
    cols = list(dict.fromkeys(c for row in rows.values() for c in row))
    widths = [max(11, len(c) + 1) for c in cols]  # a long column name keeps a space before it
    lines = [f"{'':10s}" + "".join(f"{c:>{w}s}" for c, w in zip(cols, widths))]
    for name, row in rows.items():
        lines.append(f"{name:10s}" + "".join(f"{'-':>{w}s}" if row.get(c) is None else f"{row[c]:{w}.4f}"
                                             for c, w in zip(cols, widths)))
    return "\n".join(lines)
