"""CHAIR on the shapes world (vlrm_jax.world.chair_words) against the world's exact parser."""
import numpy as np
import pytest

from vlrm_jax.eval.chair import chair, mentioned_objects
from vlrm_jax.world import language, shapes
from vlrm_jax.world.chair_words import scene_objects, world_vocabulary
from vlrm_jax.world.shapes import Scene, SceneObject

SCENE = Scene("white", (SceneObject("circle", "red", "large", 0), SceneObject("star", "blue", "small", 4)))


@pytest.fixture(scope="module")
def captioned():
    """(caption, scene) pairs: every caption form the world writes, true and made false in each way
    language.py makes it false, over 300 scenes."""
    world = shapes.generate_world(seed=11, n_train=1, n_test=300, image_size=32)
    rng = np.random.default_rng(0)
    out = []
    for scene in world.test.scenes:
        bases = [language.complete_description(scene, t) for t in range(len(shapes.FULL_TEMPLATES))]
        bases += [language.terse_description(scene), language.partial_description(scene, rng)]
        for d in bases:
            made = [d, language.corrupt(d, scene, rng), language.mispair(d, scene, rng),
                    language.add_confusable(d, scene, rng), language.misplace(d, scene, rng)]
            out += [(language.render_description(m), scene) for m in made if m is not None]
    return out


def parse_hallucinations(caption, scene):
    """The objects the exact parse finds absent that CHAIR can see: all kinds but "repeated"."""
    return [i for i, kind in language.absent_objects(caption, scene) if kind != "repeated"]


def test_the_vocabulary_is_every_colour_shape_pair():
    vocab = world_vocabulary()
    assert len(vocab.classes) == len(shapes.COLOURS) * len(shapes.SHAPES)
    assert scene_objects(SCENE) == {"red circle", "blue star"}


@pytest.mark.parametrize("caption, expected", [
    ("a large red circle at the top left and a small blue star in the centre on a white background",
     ["red circle", "blue star"]),
    ("two red crosses and three grey hearts", ["red cross", "gray heart"]),  # plurals, the other spelling
    ("a white background with an orange diamond", ["orange diamond"]),  # the background names no object
    ("a circle", []),  # a shape without its colour names no class
])
def test_mentions(caption, expected):
    assert mentioned_objects(caption, world_vocabulary()) == expected


def test_chair_agrees_with_the_exact_parse_on_the_worlds_captions(captioned):
    vocab = world_vocabulary()
    assert all(language.parse(text) is not None for text, _ in captioned)
    for text, scene in captioned:
        reading = language.parse(text)
        named = mentioned_objects(text, vocab)
        assert named == [f"{m.colour} {m.shape}" for m in reading.objects], text
        hallucinated = [n for n in named if n not in scene_objects(scene)]
        assert len(hallucinated) == len(parse_hallucinations(text, scene)), text
    texts, scenes = zip(*captioned)
    got = chair(list(texts), [scene_objects(s) for s in scenes], vocab)
    share = np.mean([bool(parse_hallucinations(t, s)) for t, s in captioned])
    assert got["chair_s"] == pytest.approx(share)
    assert got["hallucinated"] == sum(len(parse_hallucinations(t, s)) for t, s in captioned)
    # the set holds both kinds in good numbers, so the agreement is not vacuous
    assert len(captioned) > 3000 and 0.2 < share < 0.6


@pytest.mark.parametrize("caption, chair_hallucinated, parse_absent", [
    # a second red circle: the parse counts it absent ("repeated"), CHAIR sees a class the scene holds
    ("a red circle, a red circle and a blue star", False, ["red circle"]),
    # an absent colour and a wrong background: no object named is absent
    ("a red circle and a blue star on a black background", False, ["colour black", "black background"]),
    # outside the grammar: the parse finds nothing to read, CHAIR still matches the pair
    ("two green hearts", True, None),
])
def test_where_chair_and_the_parse_differ(caption, chair_hallucinated, parse_absent):
    got = chair([caption], [scene_objects(SCENE)], world_vocabulary())
    assert bool(got["hallucinated"]) == chair_hallucinated
    checked = language.check(caption, SCENE)
    if parse_absent is None:
        assert not checked.grammatical and language.absent_objects(caption, SCENE) is None
    else:
        assert list(checked.absent) == parse_absent


def test_chair_agrees_with_the_parse_on_the_demo_captioners_captions():
    """The demo's own base captioner (tests/assets/shapes_world) on the first 64 test scenes, with
    the demo's beam search: on its grammatical captions CHAIR's hallucinations are the parse's
    absent objects (all but "repeated"), caption by caption."""
    from pathlib import Path

    from tests.helpers import REPO
    from vlrm_jax.api import Captioner
    from vlrm_jax.config_utils import load_config
    from vlrm_jax.generate import GenerationConfig

    cfg = load_config("shapes", "")
    split = shapes.generate_split(cfg.world.seed, shapes.SPLITS.index("test"), 64, cfg.world.image_size,
                                  cfg.world.supersample)
    captioner = Captioner.load(str(Path(REPO) / "tests" / "assets" / "shapes_world" / "models" / "captioner"))
    generation = dict(no_repeat_ngram_size=cfg.eval.get("no_repeat_ngram_size", 2))
    captions = captioner.caption(list(split.images), **vars(GenerationConfig.paper_inference(**generation)))
    grammatical = [(c, s) for c, s in zip(captions, split.scenes) if language.parse(c) is not None]
    assert len(grammatical) >= 48  # the demo's base captioner writes the world's language
    vocab = world_vocabulary()
    for text, scene in grammatical:
        named = mentioned_objects(text, vocab)
        assert sum(n not in scene_objects(scene) for n in named) == len(parse_hallucinations(text, scene)), text
    texts, scenes = zip(*grammatical)
    share = np.mean([bool(parse_hallucinations(t, s)) for t, s in grammatical])
    assert chair(list(texts), [scene_objects(s) for s in scenes], vocab)["chair_s"] == pytest.approx(share)
