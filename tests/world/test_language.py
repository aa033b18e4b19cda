"""The world's caption language: descriptions, their rendering and corruption, match targets, and
the parser that reads captions back (grammar, what is stated right, what is absent)."""
import dataclasses

import numpy as np
import pytest

from vlrm_jax.world import language, shapes
from vlrm_jax.world.shapes import Scene, SceneObject


@pytest.fixture(scope="module")
def scenes():
    return [shapes.sample_scene(shapes.scene_rng(5, 0, i)) for i in range(200)]


def test_complete_description_is_the_full_caption(scenes):
    for scene in scenes:
        for t in range(len(shapes.FULL_TEMPLATES)):
            assert language.render_description(language.complete_description(scene, t)) == shapes.full_caption(scene, t)
        assert language.render_description(language.terse_description(scene)) == shapes.terse_caption(scene)


def test_partial_descriptions_are_true_and_corruptions_are_false(scenes):
    rng = np.random.default_rng(0)
    for scene in scenes:
        partial = language.partial_description(scene, rng)
        quality = shapes.caption_quality(language.render_description(partial), scene)
        assert not quality.mentions_absent and quality.objects == len(partial.objects)
        for base in (partial, language.complete_description(scene)):
            wrong = language.corrupt(base, scene, rng)
            assert language.render_description(wrong) != language.render_description(base)
            changed = [o for o, s, p in zip(wrong.objects, wrong.with_size, wrong.with_position)
                       if not language.describes(o, s, p, scene)]
            assert changed or wrong.background != scene.background


def test_match_targets_grow_with_the_facts_stated(scenes):
    floor = 0.1
    for scene in scenes:
        full = language.match_target(language.complete_description(scene), scene, floor)
        terse = language.match_target(language.terse_description(scene), scene, floor)
        assert full == pytest.approx(1.0) and floor < terse < full


# ---------------------------------------------------------------------------------------------
# The parser.
# ---------------------------------------------------------------------------------------------
def _descriptions(scene, rng):
    """(description, form) of every kind the world writes."""
    out = [(language.complete_description(scene, t), "full") for t in range(len(shapes.FULL_TEMPLATES))]
    out.append((language.terse_description(scene), "terse"))
    out += [(language.partial_description(scene, rng), None) for _ in range(3)]
    return out


def test_every_rendered_description_parses_back_to_what_it_states(scenes):
    rng = np.random.default_rng(1)
    for scene in scenes:
        for d, form in _descriptions(scene, rng):
            text = language.render_description(d)
            reading = language.parse(text)
            assert reading == d.reading(), text
            if form is not None:
                assert reading.form == form, text
            got = language.check(text, scene)
            assert got.grammatical and got.correct, (text, got)
            assert got.objects == len(d.objects)
            assert got.sizes == sum(d.with_size) and got.positions == sum(d.with_position)


def test_world_captions_are_grammatical_and_fully_correct(scenes):
    for scene in scenes:
        for text in [shapes.full_caption(scene), *shapes.paraphrases(scene)]:
            got = language.check(text, scene)
            assert got.form == "full" and got.correct
            assert (got.objects, got.sizes, got.positions) == (len(scene.objects),) * 3
        assert language.check(shapes.terse_caption(scene), scene).form == "terse"


def test_corruptions_show_as_absent_or_wrong(scenes):
    rng = np.random.default_rng(2)
    for scene in scenes:
        for d, _ in _descriptions(scene, rng):
            text = language.render_description(language.corrupt(d, scene, rng))
            got = language.check(text, scene)
            assert got.grammatical and not got.correct, (text, got)
            assert got.absent or got.wrong


def test_each_kind_of_corruption_is_named():
    scene = Scene("white", (SceneObject("circle", "red", "large", 0), SceneObject("star", "blue", "small", 4)))
    cases = {
        "a large red circle at the top left and a small blue star at the right on a white background":
            ((), ("small blue star at the right: position",)),
        "a small red circle at the top left and a small blue star in the centre on a white background":
            ((), ("small red circle at the top left: size",)),
        "a large red circle and a green star on a black background":
            (("green star", "colour black", "colour green", "black background"), ()),
        "a black background with a red circle and a blue square":
            (("blue square", "colour black", "black background"), ()),
    }
    for text, (absent, wrong) in cases.items():
        got = language.check(text, scene)
        assert got.grammatical and (got.absent, got.wrong) == (absent, wrong), text


@pytest.mark.parametrize("caption", [
    "a large red square at white circle",  # a position needs "the" and a cell
    "a brown orange circle",  # one colour per object
    "an red circle",  # the article agrees with the next word
    "a red circle, a blue star",  # a list ends with "and"
    "red circle",  # no article
    "a circle",  # no colour
    "a red circle on a white",
    "a red circle at the",
    "a red circle and",
    "a red circle.",
    "a red circle on a white background with a blue star",
    "a red circle at the top left left",
    "",
])
def test_ungrammatical_captions_are_rejected(caption):
    assert language.parse(caption) is None
    assert not language.check(caption, shapes.sample_scene(shapes.scene_rng(0, 0, 0))).grammatical


def test_objects_colours_and_absent_agree_with_the_word_level_reading(scenes):
    """The demo's columns do not depend on which reading counted them."""
    rng = np.random.default_rng(3)
    texts = ["a large red square at white circle", "two red circles", "a red and blue star"]
    for i, scene in enumerate(scenes):
        other = scenes[(i + 1) % len(scenes)]
        for d, _ in _descriptions(scene, rng):
            texts_here = [language.render_description(d), language.render_description(language.corrupt(d, scene, rng)),
                          shapes.full_caption(other)]
            for text in texts_here + texts:
                got, q = language.check(text, scene), shapes.caption_quality(text, scene)
                assert (got.objects, got.colours, got.mentions_absent) == (
                    q.objects, q.colours, q.mentions_absent), text


def test_mispairing_uses_only_the_scenes_words_and_reads_as_absent(scenes):
    rng = np.random.default_rng(4)
    made = 0
    for scene in scenes:
        colours, kinds = {o.colour for o in scene.objects}, {o.shape for o in scene.objects}
        for d, _ in _descriptions(scene, rng):
            wrong = language.mispair(d, scene, rng)
            if wrong is None:
                # only when no object can take another's colour or shape without matching a scene object
                swaps = [dataclasses.replace(o, **{f: getattr(p, f)}) for o in d.objects for p in scene.objects
                         for f in ("colour", "shape")]
                assert all(language.describes(x, False, False, scene) for x in swaps)
                continue
            made += 1
            changed = [i for i, (a, b) in enumerate(zip(d.objects, wrong.objects)) if a != b]
            assert len(changed) == 1
            new = wrong.objects[changed[0]]
            assert new.colour in colours and new.shape in kinds and not language.describes(new, False, False, scene)
            got = language.check(language.render_description(wrong), scene)
            # every colour word is the scene's: only the pair is absent
            assert got.grammatical and len(got.absent) == 1 and not got.wrong, got
            assert f"{new.colour} {new.shape}" in got.absent[0] and not got.absent[0].startswith("colour"), got
    assert made > 300


def test_one_object_scenes_cannot_be_mispaired():
    scene = Scene("white", (SceneObject("circle", "red", "large", 0),))
    assert language.mispair(language.terse_description(scene), scene, np.random.default_rng(0)) is None


def test_a_confusable_object_is_made_of_the_scenes_words_and_reads_as_absent(scenes):
    import collections

    rng = np.random.default_rng(4)
    made = 0
    for scene in scenes:
        d = language.partial_description(scene, rng)
        more = language.add_confusable(d, scene, rng)
        if more is None:
            assert len(scene.objects) == shapes.GRID ** 2  # only a full grid leaves no cell for it
            continue
        made += 1
        assert len(more.objects) == len(d.objects) + 1
        added = collections.Counter(more.objects) - collections.Counter(d.objects)
        (new,) = added
        assert new.colour in {o.colour for o in scene.objects} and new.shape in {o.shape for o in scene.objects}
        assert new.cell not in {o.cell for o in scene.objects}
        got = language.check(language.render_description(more), scene)
        assert got.grammatical and len(got.absent) == 1 and f"{new.colour} {new.shape}" in got.absent[0], got
    assert made > 100


def test_misplacing_moves_one_stated_position_and_nothing_else(scenes):
    rng = np.random.default_rng(5)
    for scene in scenes:
        d = language.complete_description(scene)
        moved = language.misplace(d, scene, rng)
        changed = [(a, b) for a, b in zip(d.objects, moved.objects) if a != b]
        assert len(changed) == 1 and changed[0][0].cell != changed[0][1].cell
        assert dataclasses.replace(changed[0][1], cell=changed[0][0].cell) == changed[0][0]
        got = language.check(language.render_description(moved), scene)
        assert not got.absent and len(got.wrong) == 1 and got.wrong[0].endswith(": position"), got
    unplaced = language.terse_description(scenes[0])  # states no position
    assert language.misplace(unplaced, scenes[0], rng) is None


def test_absent_objects_say_where_they_are_named_and_what_they_are_made_of():
    scene = Scene("white", (SceneObject("circle", "red", "large", 0), SceneObject("star", "blue", "small", 4)))
    caption = ("a red circle at the bottom, a red circle at the top left, a blue circle, a green star,"
               " a red heart, a green heart and a blue star")
    assert language.absent_objects(caption, scene) == [
        (0, "repeated"), (2, "mispaired"), (3, "colour"), (4, "shape"), (5, "invented")]
    assert language.absent_objects(shapes.full_caption(scene), scene) == []
    assert language.absent_objects("red circle red", scene) is None
    assert len(language.check(caption, scene).absent) >= 5


def test_absent_by_mention_counts_each_place_in_the_caption():
    from vlrm_jax.world.demo import absent_by_mention

    scene = Scene("white", (SceneObject("circle", "red", "large", 0), SceneObject("star", "blue", "small", 4)))
    captions = ["a red circle", "a red circle and a green star",
                "a blue star in the centre, a blue star at the top and a red circle",
                "circle red"]
    got = absent_by_mention(captions, [scene] * len(captions))
    assert got["named"] == [3, 2, 1] and got["absent"] == [0, 2, 0]
    assert got["kinds"] == {"repeated": 1, "mispaired": 0, "colour": 1, "shape": 0, "invented": 0}
