"""Shapes-world pre-training and demo, shortened (configs/shapes.py "smoke": a tiny world, a few
steps per stage): every folder loads through the public API, results.json has its rows and
columns, a second run reuses every stage, and a changed stage retrains only what depends on it."""
import json

import numpy as np
import pytest

from vlrm_jax.config_utils import load_config
from vlrm_jax.world import demo, language, pretrain, shapes
from vlrm_jax.world.pretrain import inputs, itm
from vlrm_jax.world.tokenizers import build_tokenizers

COLUMNS = {"R@1", "R@5", "R@10", "MRR", "mean_rank", "length", "objects", "colours", "positions", "absent", "correct",
           "grammatical", "ref_logprob", "cider", "clipscore", "chair_s", "chair_i"}


@pytest.fixture(scope="module")
def smoke_cfg():
    return load_config("shapes", "smoke")


@pytest.fixture(scope="module")
def first_run(smoke_cfg, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("shapes")
    # CLIP (and VLRM-RS) in a spawned process; the RL runs' smoke variants
    return workdir, demo.run(workdir, smoke_cfg, background=True, smoke=True)


@pytest.mark.slow  # the whole demo pipeline at smoke size: minutes
def test_demo_writes_results_rows_and_columns(first_run):
    workdir, summary = first_run
    rows = json.loads((workdir / "results.json").read_text())
    assert set(rows) == {"REF", "base", "VLRM", "VLRM-RS"}
    for row in rows.values():
        # None: CIDEr-D of the REF row (it would score itself), CHAIR-i of captions naming no object
        assert set(row) == COLUMNS and all(v is None or np.isfinite(v) for v in row.values())
        assert row["cider"] is not None or row is rows["REF"]
    assert rows["REF"]["absent"] == 0.0 and rows["REF"]["correct"] == 1.0  # the full captions are right
    assert rows["REF"]["chair_s"] == 0.0 and rows["REF"]["chair_i"] == 0.0  # and name no absent pair
    assert rows["REF"]["objects"] > 0 and rows["REF"]["positions"] == rows["REF"]["objects"]
    assert (workdir / "examples.png").stat().st_size > 0
    assert (workdir / "plots" / "rl_training.png").stat().st_size > 0
    for kind in ("vlrm", "vlrm_rs"):  # the RL runs went through main.py's builder and loop
        lines = (workdir / "rl" / f"{kind}_smoke" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(ln)["step"] for ln in lines if "eval/R@1" not in ln] == list(range(1, 11))
    assert len((workdir / "test_captions.jsonl").read_text().splitlines()) == summary["base_captions"]["total"]
    assert set(summary["absent_by_mention"]) == {"base", "VLRM", "VLRM-RS"}
    for name, places in summary["absent_by_mention"].items():  # the first place counts each grammatical caption
        assert (places["named"] or [0])[0] == round(rows[name]["grammatical"] * summary["base_captions"]["total"])
    for stage in pretrain.STAGES:
        assert not summary["stages"][stage]["skipped"]
        assert (workdir / "plots" / f"{stage}_loss.png").is_file()
        assert any((workdir / "tb" / stage).iterdir())


@pytest.mark.slow  # the whole demo pipeline at smoke size: minutes
def test_every_folder_loads_through_the_public_api(first_run, smoke_cfg):
    from vlrm_jax import Captioner, ClipModel, ItmScorer, ReferenceLM

    workdir, _ = first_run
    models = workdir / "models"
    size = smoke_cfg.world.image_size
    pixels = np.zeros((2, size, size, 3), np.float32)

    captioner = Captioner.load(str(models / "captioner"))
    ids = np.asarray(captioner.tokenizer(["a red circle", "a blue star"]).input_ids)
    assert captioner.logits(pixels, ids).shape == (2, ids.shape[1], captioner.config.text.vocab_size)
    assert len(captioner.caption([np.zeros((size, size, 3), np.uint8)], max_new_tokens=5)) == 1

    lm = ReferenceLM.load(str(models / "reference_lm"))
    assert lm.logits(ids).shape == (2, ids.shape[1], captioner.config.text.vocab_size)

    itm = ItmScorer.load(str(models / "itm"))
    enc = itm.tokenizer(["a red circle", "a blue star"], padding=True, return_tensors="np")
    assert itm.logits(pixels, enc["input_ids"], enc["attention_mask"]).shape == (2, 2)

    clip = ClipModel.load(str(models / "clip"))
    images = clip.pixel_values([np.zeros((size, size, 3), np.uint8)] * 2)
    texts = clip.tokenize(["a red circle", "a blue star"])
    assert clip.encode_image(images).shape == clip.encode_text(texts).shape == (2, clip.config.embed_dim)


@pytest.mark.slow  # the whole demo pipeline at smoke size: minutes
def test_clip_trains_on_what_its_folder_preprocessing_gives(first_run, smoke_cfg):
    from vlrm_jax import ClipModel

    workdir, _ = first_run
    world = shapes.generate_world(smoke_cfg.world.seed, 6, 1, smoke_cfg.world.image_size, smoke_cfg.world.supersample)
    clip = ClipModel.load(str(workdir / "models" / "clip"))
    np.testing.assert_array_equal(inputs.clip_pixels(world.train.images, clip.config.vision.image_size[0]),
                                  clip.pixel_values(list(world.train.images)))


@pytest.mark.slow  # a second whole demo run (its evaluation compiles again)
def test_second_run_reuses_every_stage_and_gives_the_same_results(first_run, smoke_cfg):
    workdir, summary = first_run
    again = demo.run(workdir, smoke_cfg, smoke=True)
    assert all(s["skipped"] for s in again["stages"].values())
    assert again["rows"] == summary["rows"]


@pytest.mark.slow  # four smoke RL runs and three evaluations
def test_seed_sweep_rows_spread_reuse_and_determinism(first_run):
    from vlrm_jax.world import sweep

    workdir, summary = first_run
    first = sweep.run(workdir, [0, 1], tag="a", kinds=["vlrm"], smoke=True, processes=1)
    assert set(first["rows"]) == {"REF", "base", "VLRM s0", "VLRM s1"}
    assert first["rows"]["base"] == summary["rows"]["base"]
    runs = workdir / "sweeps" / "a" / "rl"

    def training(folder):  # metrics.jsonl less its timings
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")} for line in lines]

    metrics = {s: training(runs / f"vlrm_s{s}") for s in (0, 1)}
    written = (runs / "vlrm_s0" / "metrics.jsonl").read_text()
    assert metrics[0] != metrics[1]  # another seed samples other captions
    r = [first["rows"][f"VLRM s{s}"]["R@1"] for s in (0, 1)]
    assert first["spread"]["VLRM"]["R@1"]["mean"] == pytest.approx(np.mean(r))
    assert (workdir / "sweeps" / "a" / "seeds.png").is_file()
    # the same seed in another folder: the same run, to the last digit
    other = sweep.run(workdir, [0], tag="b", kinds=["vlrm"], smoke=True, processes=1)
    assert other["rows"]["VLRM s0"] == first["rows"]["VLRM s0"]
    assert training(workdir / "sweeps" / "b" / "rl" / "vlrm_s0") == metrics[0]
    # asked again, a finished run is reused (its timings too), and a change retrains
    again = sweep.run(workdir, [0], tag="a", kinds=["vlrm"], smoke=True, processes=1)
    assert (runs / "vlrm_s0" / "metrics.jsonl").read_text() == written
    assert again["rows"]["VLRM s0"] == first["rows"]["VLRM s0"]
    sweep.run(workdir, [0], tag="a", overrides=["a2c.learning_rate=1e-3"], kinds=["vlrm"], smoke=True, processes=1)
    assert training(runs / "vlrm_s0") != metrics[0]


@pytest.mark.slow
def test_changed_stage_retrains_itself_and_its_dependents(first_run, smoke_cfg, tmp_path):
    workdir, _ = first_run
    cfg = smoke_cfg.copy_and_resolve_references()
    cfg.itm.steps += 1
    world = demo.make_world(cfg.world)
    ctx = pretrain.StageContext(pretrain.Workdir(workdir), cfg, world, build_tokenizers(world, tmp_path))
    results = pretrain.run_all(ctx)
    assert {s: r.skipped for s, r in results.items()} == {
        "reference_lm": True, "itm": False, "captioner": False, "clip": True}


def test_training_is_deterministic(smoke_cfg, tmp_path):
    from vlrm_jax import ReferenceLM
    from vlrm_jax.models import build

    world = demo.make_world(smoke_cfg.world)
    tokenizers = build_tokenizers(world, tmp_path / "tok")
    params = []
    for name in ("a", "b"):
        ctx = pretrain.StageContext(pretrain.Workdir(tmp_path / name), smoke_cfg, world, tokenizers)
        pretrain.run_stage(ctx, "reference_lm")
        params.append(build.flat_params(ReferenceLM.load(str(ctx.workdir.model("reference_lm"))).module))
    for path, value in params[0].items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(params[1][path]), err_msg=str(path))


# ---------------------------------------------------------------------------------------------
# The texts the ITM learns from.
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes():
    return [shapes.sample_scene(shapes.scene_rng(5, 0, i)) for i in range(200)]


def test_memoised_wordpiece_ids_equal_the_tokenizer(scenes, tmp_path):
    world = shapes.generate_world(0, 20, 4, image_size=8, supersample=1)
    tok = inputs.load_tokenizer(build_tokenizers(world, tmp_path)["itm"])
    rng = np.random.default_rng(1)
    texts = [t for i, s in enumerate(scenes[:50]) for t, _ in itm.itm_texts(s, scenes[i + 1], rng, 0.1)]
    inputs.WordPieceIds(tok, 48).check(texts)


def test_mispaired_negatives_take_their_share_of_the_wrong_texts(scenes):
    def wrong_texts(share):
        rng = np.random.default_rng(2)
        rows = [(s, itm.itm_texts(s, scenes[(i + 1) % len(scenes)], rng, 0.1, mispaired=share)) for i, s in enumerate(scenes)]
        return [(s, texts[1][0]) for s, texts in rows]  # the full caption's wrong twin

    def only_pairing_wrong(scene, text):  # one object absent, every colour the scene's, nothing else wrong
        got = language.check(text, scene)
        return (len(got.absent) == 1 and not got.absent[0].startswith("colour ")
                and not got.absent[0].endswith(" background") and not got.wrong)

    allowed = [s for s in scenes if len(s.objects) >= 2]
    for share, low, high in ((0.0, 0.0, 0.4), (1.0, 0.9, 1.0)):  # 0: corruptions that happen to mispair
        texts = [(s, t) for s, t in wrong_texts(share) if len(s.objects) >= 2]
        rate = np.mean([only_pairing_wrong(s, t) for s, t in texts])
        assert low <= rate <= high, (share, rate)
    assert len(allowed) > 100


# ---------------------------------------------------------------------------------------------
# The image encoders' own scene pool and read-out accuracy.
# ---------------------------------------------------------------------------------------------
def test_encoder_pool_is_its_own_deterministic_stream(smoke_cfg):
    from vlrm_jax.world.pretrain.encoder import encoder_scenes

    world = demo.make_world(smoke_cfg.world)
    ctx = pretrain.StageContext(None, smoke_cfg, world, {})
    phase = smoke_cfg.itm.vision_pretrain
    pool, again = encoder_scenes(ctx, phase), encoder_scenes(ctx, phase)
    assert len(pool) == phase.n_scenes and pool.scenes == again.scenes
    np.testing.assert_array_equal(pool.images, again.images)
    # a stream of its own: not the training or the test scenes
    assert not set(pool.scenes) & (set(world.train.scenes) | set(world.test.scenes))
    assert encoder_scenes(ctx, dict(steps=1)) is world.train  # unset: the training split
    with pytest.raises(ValueError, match="n_scenes"):
        encoder_scenes(ctx, dict(n_scenes=-1))


def test_captioner_scenes_add_a_stream_of_their_own_after_the_training_split(smoke_cfg):
    from vlrm_jax.world.pretrain.captioner import captioner_scenes

    world = demo.make_world(smoke_cfg.world)
    ctx = pretrain.StageContext(None, smoke_cfg, world, {})
    n_train, extra = len(world.train), smoke_cfg.captioner.extra_scenes
    scenes, again = captioner_scenes(ctx), captioner_scenes(ctx)
    assert len(scenes) == n_train + extra > n_train and scenes.scenes == again.scenes
    assert scenes.scenes[:n_train] == world.train.scenes
    np.testing.assert_array_equal(scenes.images[:n_train], world.train.images)
    added = set(scenes.scenes[n_train:])
    encoder = set(shapes.generate_split(smoke_cfg.world.seed, shapes.ENCODER_SPLIT, extra, smoke_cfg.world.image_size).scenes)
    assert not added & (set(world.train.scenes) | set(world.test.scenes) | encoder)
    cfg = load_config("shapes", "smoke")
    cfg.captioner.extra_scenes = 0
    assert captioner_scenes(pretrain.StageContext(None, cfg, world, {})) is world.train
    cfg.captioner.extra_scenes = -1
    with pytest.raises(ValueError, match="extra_scenes"):
        captioner_scenes(pretrain.StageContext(None, cfg, world, {}))


def test_read_out_accuracy_counts_objects_whole_and_small_shapes_alone(scenes):
    from vlrm_jax.world.pretrain.encoder import CELLS, read_out_accuracy, scene_labels

    scenes = scenes[:40]
    labels = scene_labels(scenes)
    assert read_out_accuracy(labels, scenes) == {"all": 1.0, "objects": 1.0, "small_shapes": 1.0}
    small = [(i, o) for i, s in enumerate(scenes) for o in s.objects if o.size == "small"]
    n_objects = sum(len(s.objects) for s in scenes)
    predicted = labels.copy()
    i, o = small[0]
    predicted[i, o.cell] = predicted[i, o.cell] % 8 + 1  # another shape
    j, p = next((j, p) for j, s in enumerate(scenes) for p in s.objects if p.size == "large")
    predicted[j, CELLS + p.cell] = 0  # a large object's colour read as empty
    got = read_out_accuracy(predicted, scenes)
    assert got["objects"] == pytest.approx(1 - 2 / n_objects)
    assert got["small_shapes"] == pytest.approx(1 - 1 / len(small))
    assert got["all"] == pytest.approx(1 - 2 / labels.size)


def test_read_out_accuracy_tells_positions_from_the_position_columns(scenes):
    from vlrm_jax.world.pretrain.encoder import CELLS, position_labels, read_out_accuracy, scene_labels

    scenes = scenes[:40]
    predicted = np.concatenate([scene_labels(scenes), position_labels(len(scenes))], axis=1)
    assert read_out_accuracy(predicted, scenes)["positions"] == 1.0
    i, o = next((i, o) for i, s in enumerate(scenes) for o in s.objects)
    predicted[i, 3 * CELLS + 1 + o.cell] = (o.cell + 1) % CELLS  # that object's cell told wrong
    empty = next(c for c in range(CELLS) if c not in {p.cell for p in scenes[i].objects})
    predicted[i, 3 * CELLS + 1 + empty] = (empty + 1) % CELLS  # an empty cell's: not counted
    got = read_out_accuracy(predicted, scenes)
    assert got["positions"] == pytest.approx(1 - 1 / sum(len(s.objects) for s in scenes))
    assert got["objects"] == 1.0 and "positions" not in read_out_accuracy(scene_labels(scenes), scenes)


def test_the_position_head_adds_one_logit_column_per_cell():
    from flax import nnx

    from vlrm_jax.models.vit import VisionConfig, VisionTransformer
    from vlrm_jax.world.pretrain.encoder import CELLS, SceneParser, vit_tokens

    vit = VisionTransformer(VisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=30, patch_size=10), rngs=nnx.Rngs(0))
    tokens = vit_tokens(vit, np.zeros((2, 30, 30, 3), np.float32))
    plain, placed = (SceneParser(vit, 8, 30, 10, rngs=nnx.Rngs(0), positions=p) for p in (False, True))
    assert len(plain.logits(tokens)) == 3 * CELLS + 1
    got = placed.logits(tokens)
    assert len(got) == 4 * CELLS + 1 and all(z.shape == (2, CELLS) for z in got[3 * CELLS + 1:])


def test_misplaced_negatives_take_their_share_of_the_wrong_texts(scenes):
    def rate(share):
        rng = np.random.default_rng(3)
        wrong = [(s, itm.itm_texts(s, scenes[(i + 1) % len(scenes)], rng, 0.1, misplaced=share)[1][0])
                 for i, s in enumerate(scenes)]  # the full caption's wrong twin
        checks = [language.check(t, s) for s, t in wrong]
        return np.mean([not c.absent and len(c.wrong) == 1 and c.wrong[0].endswith(": position") for c in checks])

    assert rate(0.0) < 0.3 and rate(1.0) == 1.0  # full captions state every position


@pytest.mark.slow  # two smoke RL runs and their evaluation
def test_estimator_sweep_compares_variants_on_equal_captions(first_run):
    from vlrm_jax.world import estimator_sweep

    workdir, summary = first_run
    results = estimator_sweep.run(workdir, [0], ["grpo_ppo2", "a2c_kl"], smoke=True, processes=1)
    assert set(results["rows"]) == {"REF", "base", "grpo_ppo2 s0", "a2c_kl s0"}
    assert results["rows"]["base"] == summary["rows"]["base"]
    grpo, kl = results["summary"]["grpo_ppo2"], results["summary"]["a2c_kl"]
    assert grpo["captions_sampled"] == kl["captions_sampled"] == 10 * 16  # 4 images x 4 captions, 16 images
    assert grpo["train_s"] > 0 and 0 <= kl["seeds_above_base"] <= 1
    lines = [json.loads(x) for x in (workdir / "sweeps" / "est-a2c_kl" / "rl" / "vlrm_s0" / "metrics.jsonl")
             .read_text().splitlines()]
    assert all("kl/mean" in m for m in lines if "time/step_s" in m)
    table = (workdir / "sweeps" / "estimators" / "results.md").read_text()
    assert "| grpo_ppo2 |" in table and "| a2c_kl |" in table
    assert (workdir / "sweeps" / "estimators" / "estimators.png").is_file()
