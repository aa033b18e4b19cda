"""The shapes world's caption language: what a caption states, how it is written, and a parser.

A caption is one of three forms of one grammar:

    caption   := objects [ ("on" | "against") "a" COLOUR "background" ]
               | "a" COLOUR "background" "with" objects
    objects   := object | object ("," object)* "and" object
    object    := ARTICLE [SIZE] COLOUR SHAPE [POSITION]       ARTICLE agrees: "a" / "an"
    POSITION  := "at the" CELL | "in the centre"

- full: every object with size and position, and the background (shapes.full_caption);
- terse: one object, colour and shape only (shapes.terse_caption);
- partial: anything between (some objects, some attributes, background or not).

`Description` is the meaning side (which objects, which attributes stated); `render_description`
writes it, `parse` reads a caption back into a `Reading` (None when the caption is outside the
grammar), and `check` says what a caption gets right or wrong about a scene.
"""
from __future__ import annotations

import collections
import dataclasses
import re

import numpy as np

from vlrm_jax.world import shapes


# ----------------------------------------------------------------------------------------------
# Descriptions: what a caption states about a scene, correct or not (ITM texts, LM corpus).
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Description:
    """Objects named (colour and shape always; size and position when flagged) and the background
    (None: not named). With every flag set and the background named it renders as the scene's
    full caption in `template`."""

    objects: tuple[shapes.SceneObject, ...]
    with_size: tuple[bool, ...]
    with_position: tuple[bool, ...]
    background: str | None
    template: int = 0

    def facts(self) -> int:
        """Facts stated: colour and shape (2) + size + position per object, + background."""
        return (2 * len(self.objects) + sum(self.with_size) + sum(self.with_position)
                + (self.background is not None))

    def reading(self) -> "Reading":
        """What the rendered text says, as `parse` reads it back."""
        mentions = tuple(Mention(o.colour, o.shape, o.size if s else None, o.cell if p else None)
                         for o, s, p in zip(self.objects, self.with_size, self.with_position))
        template = self.template if self.background is not None else None
        return Reading(mentions, self.background, template)


def scene_facts(scene: shapes.Scene) -> int:
    return 4 * len(scene.objects) + 1


def render_description(d: Description) -> str:
    objects = shapes.join_phrases([shapes.object_phrase(o, s, p)
                                   for o, s, p in zip(d.objects, d.with_size, d.with_position)])
    if d.background is None:
        return objects
    return shapes.FULL_TEMPLATES[d.template].format(objects=objects, background=d.background)


def complete_description(scene: shapes.Scene, template: int = 0) -> Description:
    n = len(scene.objects)
    return Description(scene.objects, (True,) * n, (True,) * n, scene.background, template)


def terse_description(scene: shapes.Scene) -> Description:
    return Description((shapes.most_salient(scene),), (False,), (False,), None)


def partial_description(scene: shapes.Scene, rng: np.random.Generator) -> Description:
    """A true description of part of the scene: some objects (scene order), some attributes."""
    n = len(scene.objects)
    keep = np.sort(rng.choice(n, size=int(rng.integers(1, n + 1)), replace=False))
    objects = tuple(scene.objects[i] for i in keep)
    flags = rng.random((2, len(objects))) < 0.5
    background = scene.background if rng.random() < 0.5 else None
    template = int(rng.integers(len(shapes.FULL_TEMPLATES)))
    return Description(objects, tuple(map(bool, flags[0])), tuple(map(bool, flags[1])), background, template)


def empty_cells(scene: shapes.Scene) -> list[int]:
    """The grid cells no scene object is in, in order."""
    taken = {o.cell for o in scene.objects}
    return [c for c in range(shapes.GRID ** 2) if c not in taken]


def describes(obj: shapes.SceneObject, size: bool, position: bool, scene: shapes.Scene) -> bool:
    """Whether some scene object fits what a description says of `obj`."""
    return any(o.colour == obj.colour and o.shape == obj.shape and (not size or o.size == obj.size)
               and (not position or o.cell == obj.cell) for o in scene.objects)


def _replace_object(d: Description, i: int, obj: shapes.SceneObject) -> Description:
    return dataclasses.replace(d, objects=d.objects[:i] + (obj,) + d.objects[i + 1:])


def corrupt(d: Description, scene: shapes.Scene, rng: np.random.Generator) -> Description:
    """`d` with one detail made false: an object's colour, shape, size or position, the background,
    or an extra object the scene lacks. Each changed object fits no object of the scene, so the
    result is wrong whatever the other objects are."""
    kinds = ["colour", "shape", "size", "position", "background", "extra"]
    for kind in rng.permutation(kinds):
        out = _corrupt_as(str(kind), d, scene, rng)
        if out is not None:
            return out
    raise AssertionError("the background can always be made wrong")


def mispair(d: Description, scene: shapes.Scene, rng: np.random.Generator) -> Description | None:
    """`d` with one object given the colour or the shape of another scene object, such that no
    scene object has that colour-shape pair: every word is in the scene, only the pairing is
    false ("a blue circle" of a red circle beside a blue star). None when no such pair exists.
    An ITM that never sees these learns which words are in the scene, not which go together."""
    for i in rng.permutation(len(d.objects)):
        obj = d.objects[int(i)]
        options = [dataclasses.replace(obj, colour=o.colour) for o in scene.objects if o.colour != obj.colour]
        options += [dataclasses.replace(obj, shape=o.shape) for o in scene.objects if o.shape != obj.shape]
        options = [o for o in options if not describes(o, False, False, scene)]
        if options:
            return _replace_object(d, int(i), options[int(rng.integers(len(options)))])
    return None


def misplace(d: Description, scene: shapes.Scene, rng: np.random.Generator) -> Description | None:
    """`d` with one object whose position it states put in another cell, such that no scene object
    fits it there: every word but the position is right. None when `d` states no position."""
    for i in rng.permutation(len(d.objects)):
        out = _corrupt_as("position", d, scene, rng, index=int(i))  # None where no position is stated
        if out is not None:
            return out
    return None


def _corrupt_as(kind: str, d: Description, scene: shapes.Scene, rng, index: int | None = None) -> Description | None:
    if kind == "background":
        wrong = [c for c in shapes.BACKGROUND_COLOURS if c != scene.background]
        template = d.template if d.background is not None else int(rng.integers(len(shapes.FULL_TEMPLATES)))
        return dataclasses.replace(d, background=str(rng.choice(wrong)), template=template)
    if kind == "extra":
        return _with_extra_object(d, scene, rng)
    i = int(rng.integers(len(d.objects))) if index is None else index
    obj, size, position = d.objects[i], d.with_size[i], d.with_position[i]
    if kind == "size" and not size or kind == "position" and not position:
        return None
    field, values = {"colour": ("colour", list(shapes.OBJECT_COLOURS)), "shape": ("shape", list(shapes.SHAPES)),
                     "size": ("size", list(shapes.SIZES)), "position": ("cell", list(range(shapes.GRID ** 2)))}[kind]
    options = [dataclasses.replace(obj, **{field: v}) for v in values if v != getattr(obj, field)]
    options = [o for o in options if o.colour != scene.background and not describes(o, size, position, scene)]
    if not options:
        return None
    return _replace_object(d, i, options[int(rng.integers(len(options)))])


def _insert_object(d: Description, obj: shapes.SceneObject) -> Description:
    """`d` with `obj` added, stated with size and position, in cell order as captions list objects."""
    order = sorted(range(len(d.objects) + 1), key=lambda j: (d.objects + (obj,))[j].cell)
    pick = lambda seq, extra: tuple((tuple(seq) + (extra,))[j] for j in order)  # noqa: E731
    return dataclasses.replace(d, objects=pick(d.objects, obj), with_size=pick(d.with_size, True),
                               with_position=pick(d.with_position, True))


def _with_extra_object(d: Description, scene: shapes.Scene, rng) -> Description | None:
    free = [c for c in range(shapes.GRID ** 2) if c not in {o.cell for o in d.objects}]
    colours = [c for c in shapes.OBJECT_COLOURS if c != scene.background]
    for _ in range(10):
        obj = shapes.SceneObject(str(rng.choice(shapes.SHAPES)), str(rng.choice(colours)),
                                 str(rng.choice(shapes.SIZES)), int(rng.choice(free)))
        if not describes(obj, False, False, scene):  # its colour-shape pair is nowhere in the scene
            return _insert_object(d, obj)
    return None


def add_confusable(d: Description, scene: shapes.Scene, rng: np.random.Generator) -> Description | None:
    """`d` with one object more, made only of the scene's own words: a colour and a shape of scene
    objects, either mispaired ("a blue circle" beside a red circle and a blue star) or a second
    copy of an object `d` already names, at a cell where the scene has nothing. The text then
    names more objects of that colour-shape pair than the scene holds. This is what an RL policy
    invents once its reward model checks each word against the scene but not the count or the
    pairing of the objects. None when the scene has no empty cell."""
    free = empty_cells(scene)
    if not free:
        return None
    held = collections.Counter((o.colour, o.shape) for o in scene.objects)
    named = collections.Counter((o.colour, o.shape) for o in d.objects)
    pairs = sorted({(o.colour, p.shape) for o in scene.objects for p in scene.objects})
    pairs = [pair for pair in pairs if named[pair] >= held[pair]]  # one more of it is then false
    if not pairs:
        return None
    colour, shape = pairs[int(rng.integers(len(pairs)))]
    return _insert_object(d, shapes.SceneObject(shape, colour, str(rng.choice(shapes.SIZES)), int(rng.choice(free))))


def match_target(d: Description, scene: shapes.Scene, floor: float) -> float:
    """Match probability the ITM learns for a true description: 1 when complete, else
    floor + (1 - floor) * facts stated / facts in the scene, so each correct detail adds reward."""
    return floor + (1.0 - floor) * d.facts() / scene_facts(scene)


# ----------------------------------------------------------------------------------------------
# Parsing: a caption back into what it states.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Mention:
    """One object as a caption states it; None: not stated."""

    colour: str
    shape: str
    size: str | None = None
    cell: int | None = None

    def phrase(self) -> str:
        words = ([self.size] if self.size else []) + [self.colour, self.shape]
        text = " ".join(words)
        return f"{text} {shapes.CELL_PHRASES[self.cell]}" if self.cell is not None else text


@dataclasses.dataclass(frozen=True)
class Reading:
    """A grammatical caption's content; template: which FULL_TEMPLATES frames the background."""

    objects: tuple[Mention, ...]
    background: str | None
    template: int | None = None

    @property
    def form(self) -> str:
        """"terse", "full" (every attribute and the background) or "partial"."""
        (first, *rest) = self.objects
        if not rest and self.background is None and first.size is None and first.cell is None:
            return "terse"
        full = self.background is not None and all(m.size and m.cell is not None for m in self.objects)
        return "full" if full else "partial"


_CELLS = {tuple(phrase.split()): cell for cell, phrase in enumerate(shapes.CELL_PHRASES)}
# Each template as the words before and after the object list, with "{background}" kept a slot.
_FRAMES = tuple(tuple(part.split() for part in t.split("{objects}")) for t in shapes.FULL_TEMPLATES)


class _Words:
    """A cursor over a caption's words; every `take_*` consumes on success only."""

    def __init__(self, words: list[str]):
        self.words, self.at = words, 0

    def peek(self, k: int = 0) -> str | None:
        return self.words[self.at + k] if self.at + k < len(self.words) else None

    def take(self, *expected: str) -> bool:
        if tuple(self.words[self.at:self.at + len(expected)]) == expected:
            self.at += len(expected)
            return True
        return False

    def take_from(self, vocabulary) -> str | None:
        word = self.peek()
        if word in vocabulary:
            self.at += 1
            return word
        return None

    def take_position(self) -> int | None:
        # longest first: "at the top left" before "at the top"
        for phrase in sorted(_CELLS, key=len, reverse=True):
            if self.take(*phrase):
                return _CELLS[phrase]
        return None

    def take_object(self) -> Mention | None:
        start = self.at
        article = self.take_from(("a", "an"))
        size = self.take_from(shapes.SIZES)
        colour = self.take_from(shapes.COLOURS)
        shape = self.take_from(shapes.SHAPES)
        if article is None or colour is None or shape is None or article != shapes.article(size or colour):
            self.at = start
            return None
        return Mention(colour, shape, size, self.take_position())

    def take_objects(self) -> tuple[Mention, ...] | None:
        """object | object ("," object)* "and" object."""
        first = self.take_object()
        if first is None:
            return None
        objects = [first]
        while self.take(","):
            nxt = self.take_object()
            if nxt is None:
                return None
            objects.append(nxt)
        if self.take("and"):
            last = self.take_object()
            if last is None:
                return None
            return tuple(objects + [last])
        return tuple(objects) if len(objects) == 1 else None  # "x, y" lacks its "and"

    def take_frame_words(self, words: list[str]) -> str | None | bool:
        """Consume a template's fixed words; returns the background colour in its slot (or True
        when the part has no slot), None when the words do not match."""
        background: str | bool = True
        for word in words:
            if word == "{background}":
                colour = self.take_from(shapes.COLOURS)
                if colour is None:
                    return None
                background = colour
            elif not self.take(word):
                return None
        return background


def words_of(caption: str) -> list[str] | None:
    """Lower-case words and commas; None when the caption holds anything else (digits, dots...)."""
    text = caption.strip().lower()
    words = re.findall(r"[a-z]+|,", text)
    return words if "".join(words) == re.sub(r"\s+", "", text) else None


def parse(caption: str) -> Reading | None:
    """The caption's content when it is a sentence of the world's language, else None."""
    words = words_of(caption)
    if not words:
        return None
    for template, (before, after) in enumerate(_FRAMES):
        cursor = _Words(words)
        head = cursor.take_frame_words(before)
        objects = cursor.take_objects() if head is not None else None
        tail = cursor.take_frame_words(after) if objects is not None else None
        if tail is not None and cursor.peek() is None:
            background = head if isinstance(head, str) else tail
            return Reading(objects, background, template)
    cursor = _Words(words)
    objects = cursor.take_objects()
    if objects is not None and cursor.peek() is None:
        return Reading(objects, None)
    return None


# ----------------------------------------------------------------------------------------------
# Checking a caption against its scene.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaptionCheck:
    """What a caption gets right about a scene. objects, colours and absent are defined as
    shapes.caption_quality defines them (and equal it); sizes and positions need the parse."""

    grammatical: bool
    form: str | None  # Reading.form; None when not grammatical
    objects: int  # scene objects named with the right colour and shape, each counted once
    colours: int  # distinct colour words that are in the scene (objects or background)
    sizes: int  # sizes stated right, of the objects counted in `objects`
    positions: int  # positions stated right, likewise
    wrong: tuple[str, ...]  # sizes / positions stated wrong of objects the scene has
    absent: tuple[str, ...]  # objects (colour-shape pairs), colours or a background the scene lacks
    n_objects: int  # objects in the scene, for ratios

    @property
    def mentions_absent(self) -> bool:
        return bool(self.absent)

    @property
    def correct(self) -> bool:
        """Grammatical and nothing stated false."""
        return self.grammatical and not self.absent and not self.wrong


def check(caption: str, scene: shapes.Scene) -> CaptionCheck:
    """Parse `caption` and compare it with `scene`. A caption outside the grammar still gets its
    objects / colours / absent from the word-level reading of shapes.caption_quality."""
    reading = parse(caption)
    if reading is None:
        q = shapes.caption_quality(caption, scene)
        return CaptionCheck(False, None, q.objects, q.colours, 0, 0, (), q.absent, len(scene.objects))
    pairs = _match(reading.objects, scene.objects)
    matched = dict(pairs)
    absent = [m.phrase() for i, m in enumerate(reading.objects) if i not in matched]
    sizes = positions = 0
    wrong = []
    for i, j in pairs:
        m, o = reading.objects[i], scene.objects[j]
        if m.size is not None:
            sizes += m.size == o.size
            wrong += [f"{m.phrase()}: size"] * (m.size != o.size)
        if m.cell is not None:
            positions += m.cell == o.cell
            wrong += [f"{m.phrase()}: position"] * (m.cell != o.cell)
    scene_colours = {o.colour for o in scene.objects} | {scene.background}
    said = {m.colour for m in reading.objects} | ({reading.background} - {None})
    absent += [f"colour {c}" for c in sorted(said - scene_colours)]
    if reading.background is not None and reading.background != scene.background:
        absent.append(f"{reading.background} background")
    return CaptionCheck(True, reading.form, len(pairs), len(said & scene_colours), sizes, positions,
                        tuple(wrong), tuple(absent), len(scene.objects))


# What an absent object is made of (`absent_objects`), from the closest to the scene to the farthest.
ABSENT_KINDS = ("repeated", "mispaired", "colour", "shape", "invented")


def absent_objects(caption: str, scene: shapes.Scene) -> list[tuple[int, str]] | None:
    """(index among the caption's objects, kind) of every object the caption names that the scene
    lacks, as `check` matches them; None when the caption is outside the grammar. Kinds:
    "repeated", a colour-shape pair the scene holds, named more often than it holds it;
    "mispaired", the colour and the shape of scene objects that no object pairs; "colour" / "shape",
    only the shape / only the colour is on some scene object; "invented", neither is."""
    reading = parse(caption)
    if reading is None:
        return None
    matched = dict(_match(reading.objects, scene.objects))
    pairs = {(o.colour, o.shape) for o in scene.objects}
    colours, shape_words = {o.colour for o in scene.objects}, {o.shape for o in scene.objects}
    out = []
    for i, m in enumerate(reading.objects):
        if i in matched:
            continue
        if (m.colour, m.shape) in pairs:
            kind = "repeated"
        elif m.colour in colours and m.shape in shape_words:
            kind = "mispaired"
        elif m.shape in shape_words:
            kind = "colour"
        elif m.colour in colours:
            kind = "shape"
        else:
            kind = "invented"
        out.append((i, kind))
    return out


def _match(mentions: tuple[Mention, ...], objects: tuple[shapes.SceneObject, ...]) -> list[tuple[int, int]]:
    """Mention -> scene object pairs of the same colour and shape, one-to-one: as many pairs as
    possible, then as many stated sizes and positions right as possible."""
    from scipy.optimize import linear_sum_assignment

    if not mentions or not objects:
        return []
    score = np.zeros((len(mentions), len(objects)))
    for i, m in enumerate(mentions):
        for j, o in enumerate(objects):
            if (m.colour, m.shape) == (o.colour, o.shape):
                # 100 per pair outweighs any difference in attributes (at most 2 per mention)
                score[i, j] = 100 + (m.size in (None, o.size)) + (m.cell in (None, o.cell))
    rows, cols = linear_sum_assignment(score, maximize=True)
    return [(int(i), int(j)) for i, j in zip(rows, cols) if score[i, j] > 0]
