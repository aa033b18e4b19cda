"""The shapes world: determinism, scene rules, caption contents and caption_quality."""
import re
from pathlib import Path

import numpy as np
import pytest

from vlrm_jax.world import shapes
from vlrm_jax.world.shapes import (
    Scene,
    SceneObject,
    caption_quality,
    full_caption,
    generate_world,
    load_world,
    paraphrases,
    render,
    terse_caption,
    write_world,
)

ASSETS = Path(shapes.__file__).resolve().parents[1] / "assets"


def _asset_section(name: str, section: str) -> set[str]:
    words, current = set(), None
    for line in (ASSETS / name).read_text().splitlines():
        if line.startswith("#"):
            current = line[1:].strip()
        elif line.strip() and current == section:
            words.add(line.strip())
    return words


def _bad_phrases() -> list[str]:
    lines = (ASSETS / "bad_phrases.txt").read_text().splitlines()
    return [l.strip() for l in lines if l.strip() and not l.startswith("#")]


@pytest.fixture(scope="module")
def scenes_1000():
    return [shapes.sample_scene(shapes.scene_rng(0, 0, i)) for i in range(1000)]


@pytest.fixture(scope="module")
def small_world():
    return generate_world(seed=3, n_train=24, n_test=8, image_size=32)


# ---------------------------------------------------------------------------------------------
# Determinism.
# ---------------------------------------------------------------------------------------------
def test_same_seed_gives_identical_world(small_world):
    again = generate_world(seed=3, n_train=24, n_test=8, image_size=32)
    for name in shapes.SPLITS:
        a, b = small_world.split(name), again.split(name)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.scenes == b.scenes and a.full == b.full and a.terse == b.terse


def test_different_seed_or_split_gives_different_scenes(small_world):
    other = generate_world(seed=4, n_train=24, n_test=8, image_size=32)
    assert other.train.full != small_world.train.full
    assert not np.array_equal(other.train.images, small_world.train.images)
    assert small_world.train.full[:8] != small_world.test.full


def test_scene_i_does_not_depend_on_split_size(small_world):
    shorter = generate_world(seed=3, n_train=10, n_test=3, image_size=32)
    assert shorter.train.scenes == small_world.train.scenes[:10]
    assert shorter.test.scenes == small_world.test.scenes[:3]


def test_written_world_is_byte_identical_and_loads_back(small_world, tmp_path):
    write_world(small_world, tmp_path / "a")
    write_world(generate_world(seed=3, n_train=24, n_test=8, image_size=32), tmp_path / "b")
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 24 + 8 + 2 + 1
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel

    loaded = load_world(tmp_path / "a")
    assert (loaded.seed, loaded.image_size) == (3, 32)
    for name in shapes.SPLITS:
        a, b = small_world.split(name), loaded.split(name)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.scenes == b.scenes and a.full == b.full and a.terse == b.terse


# ---------------------------------------------------------------------------------------------
# Scenes.
# ---------------------------------------------------------------------------------------------
def test_scenes_follow_the_world_rules(scenes_1000):
    exempt_colours = _asset_section("exempt_words.txt", "colors")
    counts = set()
    for scene in scenes_1000:
        cells = [o.cell for o in scene.objects]
        assert 1 <= len(cells) <= shapes.MAX_OBJECTS
        assert len(set(cells)) == len(cells), "two objects share a cell"
        assert cells == sorted(cells), "objects are kept in reading order"
        assert scene.background in exempt_colours
        for o in scene.objects:
            assert o.colour in exempt_colours and o.colour != scene.background
            assert o.shape in shapes.SHAPES and o.size in shapes.SIZES
            assert all(-1 <= v <= 1 for v in o.offset)
        counts.add(len(cells))
    assert counts == {1, 2, 3, 4}


def test_scene_survives_json_round_trip(scenes_1000):
    for scene in scenes_1000[:50]:
        assert Scene.from_dict(scene.to_dict()) == scene


# ---------------------------------------------------------------------------------------------
# Captions.
# ---------------------------------------------------------------------------------------------
def test_full_caption_names_every_object_in_reading_order(scenes_1000):
    colour = "|".join(shapes.COLOURS)
    shape = "|".join(shapes.SHAPES)
    phrase = re.compile(rf"a (small|large) ({colour}) ({shape}) (at the [a-z ]+?|in the centre)(?=, | and | on a )")
    for scene in scenes_1000:
        caption = full_caption(scene)
        assert caption == caption.lower()
        assert caption.endswith(f" on a {scene.background} background")
        found = phrase.findall(caption)
        expected = [(o.size, o.colour, o.shape, shapes.CELL_PHRASES[o.cell]) for o in scene.objects]
        assert found == expected, caption


def test_full_caption_reads_naturally_for_each_count():
    objs = [SceneObject("circle", "red", "large", 0), SceneObject("star", "blue", "small", 4),
            SceneObject("ring", "orange", "small", 5), SceneObject("heart", "pink", "large", 8)]
    assert full_caption(Scene("white", tuple(objs[:1]))) == (
        "a large red circle at the top left on a white background")
    assert full_caption(Scene("white", tuple(objs[:2]))) == (
        "a large red circle at the top left and a small blue star in the centre on a white background")
    assert full_caption(Scene("black", tuple(objs))) == (
        "a large red circle at the top left, a small blue star in the centre, a small orange ring"
        " at the right and a large pink heart at the bottom right on a black background")
    assert paraphrases(Scene("gray", tuple(objs[:1]))) == [
        "a gray background with a large red circle at the top left",
        "a large red circle at the top left against a gray background"]


def test_terse_names_exactly_one_object_of_the_scene(scenes_1000):
    terse = re.compile(rf"(an?) ({'|'.join(shapes.COLOURS)}) ({'|'.join(shapes.SHAPES)})")
    for scene in scenes_1000:
        caption = terse_caption(scene)
        m = terse.fullmatch(caption)
        assert m, caption
        article, colour, shape = m.groups()
        assert article == ("an" if colour == "orange" else "a")
        named = [o for o in scene.objects if (o.colour, o.shape) == (colour, shape)]
        assert named, caption
        # The most salient object is large whenever the scene has a large one.
        if any(o.size == "large" for o in scene.objects):
            assert any(o.size == "large" for o in named)
        q = caption_quality(caption, scene)
        assert (q.objects, q.mentions_absent) == (1, False)


def test_terse_picks_the_large_object_nearest_the_centre():
    scene = Scene("white", (SceneObject("star", "blue", "small", 4),
                            SceneObject("circle", "red", "large", 0),
                            SceneObject("ring", "orange", "large", 5)))
    assert terse_caption(scene) == "an orange ring"


def test_full_captions_are_distinct_while_terse_ones_collide(scenes_1000):
    full = [full_caption(s) for s in scenes_1000]
    terse = [terse_caption(s) for s in scenes_1000]
    # How many of the 1000 scenes a terse caption fits (the scene has that colour-shape pair):
    pairs = [{(o.colour, o.shape) for o in s.objects} for s in scenes_1000]
    fits = [sum(tuple(t.split()[1:]) in p for p in pairs) for t in terse]
    print(f"\ndistinct over 1000 scenes: full {len(set(full))}, terse {len(set(terse))}; "
          f"a terse caption fits {np.mean(fits):.1f} scenes on average (min {min(fits)})")
    assert len(set(full)) >= 980
    assert len(set(terse)) <= 100  # bounded by 12 colours x 8 shapes
    assert np.mean(fits) >= 10  # retrieval from the terse caption alone is far from solved


def test_no_caption_contains_a_bad_phrase(scenes_1000):
    bad = [re.compile(rf"(?<![a-z]){re.escape(p)}(?![a-z])") for p in _bad_phrases()]
    sample = scenes_1000[:300] + [Scene("white", tuple(
        SceneObject(shp, "red", "large", cell) for cell, shp in zip(range(9), shapes.SHAPES)))]
    for scene in sample:
        for caption in [full_caption(scene), terse_caption(scene), *paraphrases(scene)]:
            hits = [p.pattern for p in bad if p.search(caption)]
            assert not hits, (caption, hits)


# ---------------------------------------------------------------------------------------------
# Rendering.
# ---------------------------------------------------------------------------------------------
def test_render_puts_objects_in_their_cells():
    scene = Scene("white", (SceneObject("circle", "red", "large", 0),
                            SceneObject("ring", "blue", "large", 4),
                            SceneObject("square", "green", "small", 8, (1.0, 1.0))))
    image = render(scene, image_size=60)
    assert image.shape == (60, 60, 3) and image.dtype == np.uint8
    assert tuple(image[10, 10]) == shapes.OBJECT_COLOURS["red"]  # centre of cell 0
    assert tuple(image[30, 30]) == shapes.BACKGROUND_COLOURS["white"]  # the ring's hole
    assert tuple(image[30, 30 + 6]) == shapes.OBJECT_COLOURS["blue"]  # the ring itself
    assert tuple(image[10, 50]) == shapes.BACKGROUND_COLOURS["white"]  # empty cell 2
    # Jittered to the far corner of cell 8, yet inside it.
    assert tuple(image[56, 56]) == shapes.OBJECT_COLOURS["green"]
    assert tuple(image[50, 50]) == shapes.BACKGROUND_COLOURS["white"]


def test_every_shape_renders_distinctly_and_supersampling_smooths_edges():
    images = [render(Scene("black", (SceneObject(s, "white", "large", 4),)), 48) for s in shapes.SHAPES]
    assert len({im.tobytes() for im in images}) == len(shapes.SHAPES)
    sharp = render(Scene("black", (SceneObject("circle", "white", "large", 4),)), 48, supersample=1)
    assert set(np.unique(sharp)) <= {0, 255}
    assert len(np.unique(images[0])) > 2  # grey edge pixels from the box filter


def test_generation_is_fast():
    import time

    start = time.perf_counter()
    world = generate_world(seed=0, n_train=200, n_test=0)
    elapsed = time.perf_counter() - start
    assert world.train.images.shape == (200, 64, 64, 3)
    assert elapsed < 5.0, elapsed  # about 0.1 s here; loose for a busy shared machine


# ---------------------------------------------------------------------------------------------
# caption_quality on hand-written captions.
# ---------------------------------------------------------------------------------------------
SCENE = Scene("white", (SceneObject("circle", "red", "large", 0),
                        SceneObject("star", "blue", "small", 4),
                        SceneObject("ring", "gray", "small", 8)))


@pytest.mark.parametrize("caption, objects, colours, absent", [
    (full_caption(SCENE), 3, 4, False),
    ("a red circle", 1, 1, False),
    ("A Red Circle.", 1, 1, False),
    ("a grey ring and a blue star", 2, 2, False),  # "grey" is "gray"
    ("a blue circle", 0, 1, True),  # blue is there, but not as a circle
    ("a red circle and a green star", 1, 1, True),  # green is nowhere
    ("a red square", 0, 1, True),
    ("a circle and a star", 0, 0, False),  # right shapes, no colours: nothing wrong, nothing earned
    ("two red circles", 1, 1, True),  # only one red circle
    ("a red and blue star", 1, 2, False),  # "red" is cut off by "and"; the blue star counts
    ("a red circle on a black background", 1, 1, True),
    ("a red circle on a white background", 1, 2, False),
    ("a red circle, a red circle", 1, 1, True),  # the second one is not there
    ("", 0, 0, False),
])
def test_caption_quality_on_hand_written_captions(caption, objects, colours, absent):
    q = caption_quality(caption, SCENE)
    assert (q.objects, q.colours, q.mentions_absent, q.n_objects) == (objects, colours, absent, 3)


def test_caption_quality_of_world_captions(scenes_1000):
    for scene in scenes_1000[:200]:
        n_colours = len({o.colour for o in scene.objects} | {scene.background})
        for caption in [full_caption(scene), *paraphrases(scene)]:
            q = caption_quality(caption, scene)
            assert (q.objects, q.colours, q.mentions_absent) == (len(scene.objects), n_colours, False)
