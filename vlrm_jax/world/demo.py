"""The shapes world end to end on CPU: world, tokenizers, the four pre-trained models, captions
with the paper's beam search, and CLIP Recall of REF (the full descriptions) against the base
captioner.

    python -m vlrm_jax.world.demo --workdir runs/shapes [--config configs/shapes.py] [--smoke]

Writes under --workdir: world/ (images and captions.jsonl per split), tokenizers/, models/<stage>/
(folders that `Captioner.load`, `ReferenceLM.load`, `ItmScorer.load`, `ClipModel.load` read),
tb/<stage>/ and plots/ (loss curves), test_captions.jsonl, results.json ({row: {column: value}}),
summary.json (stage timings, losses, caption counts) and examples.png. A second run reuses every
stage whose config did not change. CLIP, which nothing else depends on, trains in a second process
while the other stages run (XLA runs these small graphs on about one core; --serial turns it off).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import re
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from vlrm_jax.config_utils import CONFIG_DIR, load_config
from vlrm_jax.world import language, shapes

DEFAULT_CONFIG = CONFIG_DIR / "shapes.py"
RECALL_COLUMNS = ("R@1", "R@5", "R@10", "MRR", "mean_rank")


# ----------------------------------------------------------------------------------------------
# Config, world and tokenizers.
# ----------------------------------------------------------------------------------------------
WORLD_MARKER = "demo_world.json"  # the world config a world/ folder was written from


def make_world(world_cfg) -> shapes.World:
    """The world of a config's `world` block (a pure function of it)."""
    return shapes.generate_world(world_cfg.seed, world_cfg.n_train, world_cfg.n_test,
                                 world_cfg.image_size, world_cfg.supersample)


def prepare_world(world_dir: Path, world_cfg) -> shapes.World:
    """Generate the world (a pure function of its config) and write it unless already on disk."""
    world = make_world(world_cfg)
    marker = world_dir / WORLD_MARKER
    wanted = json.dumps(world_cfg.to_dict(), sort_keys=True)
    if not marker.is_file() or marker.read_text() != wanted:
        shapes.write_world(world, world_dir)
        marker.write_text(wanted)
    return world


def prepare_tokenizers(tokenizer_dir: Path, world: shapes.World) -> dict[str, Path]:
    from vlrm_jax.world.tokenizers import build_tokenizers

    return build_tokenizers(world, tokenizer_dir)  # about a second, and the same files every time


# ----------------------------------------------------------------------------------------------
# Pre-training, with CLIP in a second process.
# ----------------------------------------------------------------------------------------------
def _stage_in_child(root: str, cfg, tokenizer_dirs: dict, stage: str, log_path: str) -> None:
    """Child process: rebuild the (deterministic) world and run one stage, output to a log."""
    with open(log_path, "w", buffering=1) as log:
        sys.stdout = sys.stderr = log
        from vlrm_jax.world import pretrain

        ctx = pretrain.StageContext(pretrain.Workdir(Path(root)), cfg, make_world(cfg.world), tokenizer_dirs)
        pretrain.run_stage(ctx, stage)


class BackgroundStage:
    """One stage in a spawned process; `result()` waits for it and reads its folder's record."""

    def __init__(self, ctx, stage: str):
        from vlrm_jax.world import pretrain

        self.ctx, self.stage = ctx, stage
        self.log = ctx.workdir.root / "logs" / f"{stage}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.cached = pretrain.cached_result(ctx, stage)
        self.process = None
        if self.cached is None:
            spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked JAX state
            self.process = spawn.Process(target=_stage_in_child, name=f"pretrain-{stage}",
                                         args=(str(ctx.workdir.root), ctx.cfg, ctx.tokenizer_dirs, stage, str(self.log)))
            self.process.start()
            print(f"[{stage}] training in a background process (log: {self.log})")

    def result(self):
        from vlrm_jax.world import pretrain

        if self.cached is not None:
            print(f"[{self.stage}] cached in {self.cached.folder} (trained in {self.cached.seconds:.0f} s)")
            return self.cached
        self.process.join()
        result = pretrain.cached_result(self.ctx, self.stage)
        if self.process.exitcode != 0 or result is None:
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-20:])
            raise RuntimeError(f"stage {self.stage} failed (exit code {self.process.exitcode}); log tail:\n{tail}")
        print(f"[{self.stage}] trained in the background in {result.seconds:.0f} s")
        return dataclasses.replace(result, skipped=False)


def train_models(ctx, background: bool) -> dict:
    from vlrm_jax.world import pretrain

    clip = BackgroundStage(ctx, "clip") if background else None
    results = {stage: pretrain.run_stage(ctx, stage) for stage in ("reference_lm", "itm", "captioner")}
    results["clip"] = clip.result() if clip else pretrain.run_stage(ctx, "clip")
    return results


# ----------------------------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------------------------
_OBJECT_RE = re.compile(r"\b(?:(?:small|large) )?({colours}) ({shapes})s?\b".format(
    colours="|".join(shapes.COLOURS), shapes="|".join(shapes.SHAPES)))


def named_objects(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) of every "[size] colour shape" phrase of a caption."""
    return _OBJECT_RE.findall(caption.lower())


def salient_counts(captions: list[str], scenes, style: str = "sized") -> dict[str, int]:
    """How many captions name exactly the scene's most salient object (and nothing else), name it
    among others, name some object of the scene first (right colour and shape), are exactly
    the captioner's training target (pretrain.captioner.short_caption), or are sentences of the
    world's language (language.parse)."""
    from vlrm_jax.world.pretrain.captioner import short_caption

    counts = {"names_only_salient": 0, "names_salient": 0, "first_is_scene_object": 0, "exact_target": 0,
              "grammatical": 0}
    for caption, scene in zip(captions, scenes):
        counts["grammatical"] += language.parse(caption) is not None
        salient = shapes.most_salient(scene)
        objects = named_objects(caption)
        counts["names_only_salient"] += objects == [(salient.colour, salient.shape)]
        counts["names_salient"] += (salient.colour, salient.shape) in objects
        counts["first_is_scene_object"] += bool(objects) and objects[0] in {(o.colour, o.shape) for o in scene.objects}
        counts["exact_target"] += caption == short_caption(scene, style)
    return counts


def absent_by_mention(captions: list[str], scenes) -> dict:
    """Where a row's grammatical captions name objects the scene lacks (language.absent_objects):
    per position in the caption (first object named, second, ...) how many captions name an object
    there and how many of those are absent, and how many absent objects are of each kind. A row
    that names more objects has more chances to misread one; this tells the two apart."""
    named, absent = [], []
    kinds = dict.fromkeys(language.ABSENT_KINDS, 0)
    for caption, scene in zip(captions, scenes):
        found = language.absent_objects(caption, scene)
        if found is None:
            continue
        n = len(language.parse(caption).objects)
        named += [0] * (n - len(named))
        absent += [0] * (n - len(absent))
        for i in range(n):
            named[i] += 1
        for i, kind in found:
            absent[i] += 1
            kinds[kind] += 1
    return {"named": named, "absent": absent, "kinds": kinds}


def quality_columns(captions: list[str], scenes) -> dict[str, float]:
    """Mean length; objects, colours and positions stated right; the share naming something absent
    (language.check: the parse where the caption is grammatical, the word-level reading where it
    is not); the share stating nothing false (no absent thing, no wrong size or position); and the
    share of captions that are sentences of the world's language."""
    quality = [language.check(c, s) for c, s in zip(captions, scenes)]
    return {"length": float(np.mean([len(c.split()) for c in captions])),
            "objects": float(np.mean([q.objects for q in quality])),
            "colours": float(np.mean([q.colours for q in quality])),
            "positions": float(np.mean([q.positions for q in quality])),
            "absent": float(np.mean([q.mentions_absent for q in quality])),
            "correct": float(np.mean([q.correct for q in quality])),
            "grammatical": float(np.mean([q.grammatical for q in quality]))}


def caption_metric_columns(clip, data, scenes, references: list[list[str]] | None) -> dict[str, float | None]:
    """The evaluation command's metrics that apply to the world: CIDEr-D against the full
    descriptions (references None: the REF row, which would score itself), CLIPScore with the
    world's CLIP (no prompt prefix: the CLIP knows only the world's language) and CHAIR with the
    colour-shape pairs as the object classes (vlrm_jax.world.chair_words: on grammatical captions
    its hallucinations are the parser's absent objects, repeats aside)."""
    from vlrm_jax.eval.chair import chair
    from vlrm_jax.eval.clip_eval import embed_texts
    from vlrm_jax.eval.clip_score import clip_score_summary
    from vlrm_jax.eval.reference_metrics import reference_scores
    from vlrm_jax.eval.report import nan_as_none
    from vlrm_jax.world.chair_words import scene_objects, world_vocabulary

    texts = data.captions if references is not None else [shapes.full_caption(s) for s in scenes]
    found = chair(texts, [scene_objects(s) for s in scenes], world_vocabulary())
    out = {"cider": reference_scores(texts, references).scores.get("cider") if references is not None else None,
           "clipscore": clip_score_summary(embed_texts(clip, texts), data.image_emb)["clipscore"],
           "chair_s": found["chair_s"], "chair_i": found["chair_i"]}
    return nan_as_none(out)


def reference_logprob(ref_lm, texts: list[str]) -> float:
    """Mean over captions of the mean token log-probability (EOS included) under the reference LM,
    the reward's `ref` term as the evaluation captions score."""
    tok = ref_lm.tokenizer
    rows = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    width = max(map(len, rows))
    ids = np.full((len(rows), width), tok.pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    from vlrm_jax.ops import token_logprob

    logits = ref_lm.logits(ids, mask)[:, :-1]
    chosen = np.asarray(token_logprob(logits, ids[:, 1:])) * mask[:, 1:]
    return float(np.mean(chosen.sum(1) / mask[:, 1:].sum(1)))


def evaluate(workdir, world: shapes.World, cfg, policies: dict[str, Path] | None = None) -> tuple[dict, dict]:
    """Captions for the test images (paper's beam search, centre crop as in the paper's CLIP
    Recall) by the base captioner and each policy folder, and the table rows REF, base, then
    the policies. The images are read back from world/test, so the numbers are those
    `python -m vlrm_jax.evaluate` gives on that folder. Returns (rows, {row: captions})."""
    from vlrm_jax.api import Captioner, ReferenceLM
    from vlrm_jax.clip_api import ClipModel
    from vlrm_jax.eval.clip_eval import collect, recall_table
    from vlrm_jax.evaluate import open_source
    from vlrm_jax.generate import GenerationConfig

    clip = ClipModel.load(str(workdir.model("clip")))
    generation = dataclasses.asdict(GenerationConfig.paper_inference(
        no_repeat_ngram_size=cfg.eval.get("no_repeat_ngram_size", 2)))
    ref_lm = ReferenceLM.load(str(workdir.model("reference_lm")))
    folders = {"base": workdir.model("captioner"), **(policies or {})}
    source = open_source(str(workdir.world / "test"))
    rows, captions = {}, {}
    for name, folder in folders.items():
        data = collect(source, clip, Captioner.load(str(folder)), batch_size=cfg.eval.caption_batch_size,
                       generation=generation)
        scenes = [world.test.scenes[int(Path(key).stem)] for key in data.keys]
        recall = recall_table(clip, data, name=name)
        if "REF" not in rows:
            full = [shapes.full_caption(s) for s in scenes]
            rows["REF"] = {**{c: recall["REF"][c] for c in RECALL_COLUMNS}, **quality_columns(full, scenes),
                           "ref_logprob": reference_logprob(ref_lm, full),
                           **caption_metric_columns(clip, data, scenes, None)}
        rows[name] = {**{c: recall[name][c] for c in RECALL_COLUMNS}, **quality_columns(data.captions, scenes),
                      "ref_logprob": reference_logprob(ref_lm, data.captions),
                      **caption_metric_columns(clip, data, scenes, [[shapes.full_caption(s)] for s in scenes])}
        captions[name] = data.captions
    return rows, captions


def save_examples(path: Path, split: shapes.Split, captions: dict[str, list[str]], n: int) -> None:
    """The first n test images with each row's caption under them, and the full description."""
    from vlrm_jax.figure import saved_figure

    n = min(n, min(map(len, captions.values())))
    cols = min(4, n)
    rows = -(-n // cols)
    size = (3.4 * cols, (3.2 + 1.3 * len(captions)) * rows)
    with saved_figure(path, rows, cols, dpi=110, figsize=size, squeeze=False) as (_, axes):
        for ax in axes.ravel():
            ax.axis("off")
        for i, ax in enumerate(axes.ravel()[:n]):
            ax.imshow(split.images[i], interpolation="nearest")
            lines = []
            for name, texts in captions.items():
                printable = "".join(ch if ch.isprintable() else "?" for ch in texts[i])
                lines.append("\n".join(textwrap.wrap(f"{name}: {printable}", 38)))
            lines.append("\n".join(textwrap.wrap(f"REF: {split.full[i]}", 38)))
            ax.set_title("\n".join(lines), fontsize=7, loc="left")


def write_captions(path: Path, split: shapes.Split, captions: list[str]) -> None:
    with open(path, "w") as f:
        for i, caption in enumerate(captions):
            f.write(json.dumps({"file": f"{i:06d}.png", "caption": caption, "terse": split.terse[i],
                                "full": split.full[i]}) + "\n")


# ----------------------------------------------------------------------------------------------
# The whole demo.
# ----------------------------------------------------------------------------------------------
def run(workdir: str | Path, cfg, background: bool = True, rl: bool = True, smoke: bool = False) -> dict:
    """The whole demo; `rl=False` stops after the base row, `smoke` runs the RL runs' smoke
    variants (configs/shapes_rl.py)."""
    from vlrm_jax.world import pretrain, rl_runs

    start = time.perf_counter()
    wd = pretrain.Workdir(Path(workdir))
    wd.root.mkdir(parents=True, exist_ok=True)
    world = prepare_world(wd.world, cfg.world)
    ctx = pretrain.StageContext(wd, cfg, world, prepare_tokenizers(wd.tokenizers, world))
    print(f"world: {len(world.train)} train / {len(world.test)} test scenes of {cfg.world.image_size} px "
          f"in {wd.world} ({time.perf_counter() - start:.1f} s)")
    stages = train_models(ctx, background)
    rl_start = time.perf_counter()
    policies = {}
    if rl:
        trained = rl_runs.train_all(wd.root, smoke, parallel=background)
        policies = {rl_runs.LABELS[kind]: folder for kind, folder in trained.items()}
        rl_runs.plot_training(rl_runs.training_curves(wd.root, smoke), wd.root / "plots" / "rl_training.png")
    rl_seconds = time.perf_counter() - rl_start
    eval_start = time.perf_counter()
    rows, all_captions = evaluate(wd, world, cfg, policies)
    eval_seconds = time.perf_counter() - eval_start
    captions = all_captions["base"]
    counts = salient_counts(captions, world.test.scenes, cfg.captioner.caption_style)
    (wd.root / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    write_captions(wd.root / "test_captions.jsonl", world.test, captions)
    for name, texts in all_captions.items():
        if name != "base":
            write_captions(wd.root / f"test_captions_{name.lower().replace('-', '_')}.jsonl", world.test, texts)
    save_examples(wd.root / "examples.png", world.test, all_captions, cfg.eval.n_example_images)
    summary = {
        "seconds": time.perf_counter() - start, "eval_seconds": eval_seconds, "rl_seconds": rl_seconds,
        "stages": {name: {k: v for k, v in dataclasses.asdict(r).items() if k not in ("folder",)}
                   for name, r in stages.items()},
        "base_captions": {**counts, "total": len(captions)}, "rows": rows,
        "absent_by_mention": {name: absent_by_mention(texts, world.test.scenes) for name, texts in all_captions.items()},
    }
    (wd.root / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    _report(summary, wd)
    return summary


def _report(summary: dict, wd) -> None:
    from vlrm_jax.eval.clip_eval import format_table

    print("\nstage          seconds  final loss  (skipped = cached)")
    for name, s in summary["stages"].items():
        print(f"{name:14s} {s['seconds']:7.1f}  {s['final_loss']:10.4f}  {'skipped' if s['skipped'] else ''}")
    print(f"RL runs        {summary['rl_seconds']:7.1f}")
    print(f"evaluation     {summary['eval_seconds']:7.1f}")
    print("\nCLIP Recall, text-to-image over the test images (REF: the full descriptions):")
    print(format_table(summary["rows"]))
    c = summary["base_captions"]
    n = c["total"]
    print(f"\nbase captions naming exactly the salient object: {c['names_only_salient']}/{n}; naming it among "
          f"others: {c['names_salient']}/{n}; naming an object of the scene first: {c['first_is_scene_object']}/{n}; "
          f"exactly the training caption: {c['exact_target']}/{n}; grammatical: {c['grammatical']}/{n}")
    print("absent objects by their place in the caption (absent / named), and of what they are made:")
    for name, a in summary["absent_by_mention"].items():
        places = ", ".join(f"{bad / n:.1%} of {n}" for bad, n in zip(a["absent"], a["named"]))
        print(f"  {name:8s} {places}; " + ", ".join(f"{k} {v}" for k, v in a["kinds"].items()))
    print(f"wrote {wd.root / 'results.json'}, {wd.root / 'examples.png'}; total {summary['seconds']:.0f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/shapes")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="ml_collections config file")
    p.add_argument("--smoke", action="store_true", help="the seconds-long variant (get_config('smoke'))")
    p.add_argument("--serial", action="store_true", help="train CLIP (and VLRM-RS) in this process, after the others")
    p.add_argument("--no-rl", action="store_true", help="stop after the base row (no VLRM / VLRM-RS runs)")
    args = p.parse_args(argv)
    run(args.workdir, load_config(args.config, "smoke" if args.smoke else ""), background=not args.serial,
        rl=not args.no_rl, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
