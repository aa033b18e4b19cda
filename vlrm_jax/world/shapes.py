"""The shapes world: seeded scenes of coloured shapes on a 3x3 grid, their images and captions.

A scene is a background colour and 1-4 objects, each a (shape, colour, size) in its own grid cell.
Every scene has two captions:
- `full` names every object (size, colour, shape, position) and the background;
- `terse` names only the most salient object ("a red circle"), the way BLIP2 leaves details out.
The gap between them is what the RL run has to close. Everything is a pure function of the seed:
scene i of a split is drawn from its own seed, so a split's first scenes do not change with its size.

Caption words avoid the reward's bad phrases ("on the left", "in the middle of", "there is", ...),
which is why positions read "at the left" and "in the centre".
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# ----------------------------------------------------------------------------------------------
# Vocabulary of the world.
# ----------------------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart")
SIZES = ("small", "large")
# Colour names are words of the `# colors` section of assets/exempt_words.txt, so that repeating
# a colour is never a "repeat" penalty. RGB values sit far apart so tiny models can tell them apart.
OBJECT_COLOURS = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (240, 220, 20),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (130, 40, 180),
    "pink": (255, 110, 180),
    "brown": (130, 75, 30),
    "cyan": (0, 200, 220),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
BACKGROUND_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
COLOURS = dict(OBJECT_COLOURS)  # every colour word a caption can use (backgrounds are a subset)

GRID = 3
# Row-major cell names. "at the left"/"at the right": "on the left/right" are bad phrases.
CELL_NAMES = (
    "top left", "top", "top right",
    "left", "centre", "right",
    "bottom left", "bottom", "bottom right",
)
CELL_PHRASES = tuple("in the centre" if n == "centre" else f"at the {n}" for n in CELL_NAMES)
MAX_OBJECTS = 4

# Object diameter as a fraction of the cell side; the rest of the cell is room for jitter.
SIZE_EXTENT = {"small": 0.45, "large": 0.85}
# Paraphrases of the full caption; index 0 is the canonical `full`.
FULL_TEMPLATES = (
    "{objects} on a {background} background",
    "a {background} background with {objects}",
    "{objects} against a {background} background",
)


# ----------------------------------------------------------------------------------------------
# Scenes.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: int  # 0..8, row-major on the 3x3 grid
    offset: tuple[float, float] = (0.0, 0.0)  # jitter inside the cell, each in [-1, 1]

    @property
    def position(self) -> str:
        return CELL_NAMES[self.cell]


@dataclasses.dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[SceneObject, ...]

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "cell": o.cell,
                 "position": o.position, "offset": list(o.offset)}
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        objects = tuple(
            SceneObject(o["shape"], o["colour"], o["size"], int(o["cell"]), tuple(o["offset"]))
            for o in d["objects"]
        )
        return cls(d["background"], objects)


def scene_rng(seed: int, split: int, index: int) -> np.random.Generator:
    """One independent stream per scene, so scene i never depends on how many came before."""
    return np.random.default_rng(np.random.SeedSequence([seed, split, index]))


def sample_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> Scene:
    background = str(rng.choice(list(BACKGROUND_COLOURS)))
    # An object the colour of the background would be invisible.
    colours = [c for c in OBJECT_COLOURS if c != background]
    n_objects = int(rng.integers(1, max_objects + 1))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=n_objects, replace=False))
    objects = tuple(
        SceneObject(
            shape=str(rng.choice(SHAPES)),
            colour=str(rng.choice(colours)),
            size=str(rng.choice(SIZES)),
            cell=cell,
            # Rounded so the scene survives a JSON round trip unchanged.
            offset=tuple(round(float(v), 3) for v in rng.uniform(-1.0, 1.0, size=2)),
        )
        for cell in cells  # row-major, which is also the order captions list objects in
    )
    return Scene(background, objects)


# ----------------------------------------------------------------------------------------------
# Captions.
# ----------------------------------------------------------------------------------------------
def article(word: str) -> str:
    """The indefinite article before `word`."""
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: SceneObject, with_size: bool = True, with_position: bool = True) -> str:
    """"a small red circle at the top left"; size and position can be left out."""
    words = ([obj.size] if with_size else []) + [obj.colour, obj.shape]
    text = f"{article(words[0])} {' '.join(words)}"
    return f"{text} {CELL_PHRASES[obj.cell]}" if with_position else text


def join_phrases(phrases: list[str]) -> str:
    """"x", "x and y", "x, y and z"."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def full_caption(scene: Scene, template: int = 0) -> str:
    objects = join_phrases([object_phrase(o) for o in scene.objects])
    return FULL_TEMPLATES[template].format(objects=objects, background=scene.background)


def paraphrases(scene: Scene) -> list[str]:
    """The full caption in every template but the canonical one."""
    return [full_caption(scene, t) for t in range(1, len(FULL_TEMPLATES))]


def _centre_distance(cell: int) -> int:
    row, col = divmod(cell, GRID)
    return abs(row - GRID // 2) + abs(col - GRID // 2)


def most_salient(scene: Scene) -> SceneObject:
    """Largest first, then nearest the centre, then reading order: all visible in the image."""
    return min(scene.objects, key=lambda o: (o.size != "large", _centre_distance(o.cell), o.cell))


def terse_caption(scene: Scene) -> str:
    obj = most_salient(scene)
    return f"{article(obj.colour)} {obj.colour} {obj.shape}"


# ----------------------------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------------------------
def _regular_polygon(cx, cy, r, n, start_deg=-90.0, inner=None):
    """Vertices of a regular n-gon (or an n-pointed star when `inner` radius is given)."""
    points = []
    steps = 2 * n if inner else n
    for k in range(steps):
        a = math.radians(start_deg + 360.0 * k / steps)
        rk = inner if inner and k % 2 else r
        points.append((cx + rk * math.cos(a), cy + rk * math.sin(a)))
    return points


def _heart(cx, cy, r, n=48):
    # The classic parametric heart, scaled so its extent is about 2r.
    pts = []
    for k in range(n):
        t = 2 * math.pi * k / n
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + r * x / 16.5, cy - r * (y + 2.5) / 15.0))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape, cx, cy, r, fill, background):
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, fill=fill)
        hole = 0.55 * r
        draw.ellipse((cx - hole, cy - hole, cx + hole, cy + hole), fill=background)
    elif shape == "square":
        h = 0.85 * r  # a square as wide as the circle looks bigger; shrink to similar area
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "diamond":
        draw.polygon(_regular_polygon(cx, cy, r, 4), fill=fill)
    elif shape == "triangle":
        # Centre the triangle's bounding box, not its centroid, on the cell point.
        draw.polygon(_regular_polygon(cx, cy + 0.25 * r, 1.15 * r, 3), fill=fill)
    elif shape == "star":
        draw.polygon(_regular_polygon(cx, cy + 0.1 * r, 1.05 * r, 5, inner=0.45 * r), fill=fill)
    elif shape == "cross":
        w = 0.33 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif shape == "heart":
        draw.polygon(_heart(cx, cy, r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, image_size: int = 64, supersample: int = 4) -> np.ndarray:
    """RGB uint8 (H, W, 3). Drawn `supersample` times larger, then box-filtered for anti-aliasing."""
    side = image_size * supersample
    background = BACKGROUND_COLOURS[scene.background]
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    cell = side / GRID
    for obj in scene.objects:
        row, col = divmod(obj.cell, GRID)
        extent = SIZE_EXTENT[obj.size] * cell
        room = (cell - extent) / 2  # the jitter that keeps the object inside its cell
        cx = (col + 0.5) * cell + obj.offset[0] * room
        cy = (row + 0.5) * cell + obj.offset[1] * room
        _draw_shape(draw, obj.shape, cx, cy, extent / 2, OBJECT_COLOURS[obj.colour], background)
    if supersample > 1:
        image = image.resize((image_size, image_size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# Splits and the world on disk.
# ----------------------------------------------------------------------------------------------
SPLITS = ("train", "test")
# Stream of the scenes the image encoders pre-train on (drawn like train, never written).
ENCODER_SPLIT = len(SPLITS)
# Stream of the extra scenes the base captioner learns from (drawn like train, never written).
CAPTIONER_SPLIT = ENCODER_SPLIT + 1


@dataclasses.dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, H, W, 3)
    scenes: tuple[Scene, ...]
    full: tuple[str, ...]
    terse: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.scenes)


def extend_split(split: Split, more: Split) -> Split:
    """`split` followed by `more`."""
    return Split(np.concatenate([split.images, more.images]), split.scenes + more.scenes,
                 split.full + more.full, split.terse + more.terse)


@dataclasses.dataclass(frozen=True)
class World:
    seed: int
    image_size: int
    train: Split
    test: Split

    def split(self, name: str) -> Split:
        return {"train": self.train, "test": self.test}[name]


def generate_split(seed: int, split: int, n: int, image_size: int = 64, supersample: int = 4) -> Split:
    scenes = tuple(sample_scene(scene_rng(seed, split, i)) for i in range(n))
    images = np.zeros((n, image_size, image_size, 3), np.uint8)
    for i, scene in enumerate(scenes):
        images[i] = render(scene, image_size, supersample)
    return Split(
        images=images,
        scenes=scenes,
        full=tuple(full_caption(s) for s in scenes),
        terse=tuple(terse_caption(s) for s in scenes),
    )


def generate_world(seed: int, n_train: int, n_test: int, image_size: int = 64,
                   supersample: int = 4) -> World:
    return World(
        seed=seed,
        image_size=image_size,
        train=generate_split(seed, SPLITS.index("train"), n_train, image_size, supersample),
        test=generate_split(seed, SPLITS.index("test"), n_test, image_size, supersample),
    )


def _file_name(index: int) -> str:
    return f"{index:06d}.png"


def write_world(world: World, out_dir) -> Path:
    """`out_dir/{train,test}/NNNNNN.png` + `captions.jsonl` per split + `world.json`."""
    out = Path(out_dir)
    for name in SPLITS:
        split = world.split(name)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, scene in enumerate(split.scenes):
            Image.fromarray(split.images[i]).save(folder / _file_name(i), format="PNG")
            record = {"file": _file_name(i), "full": split.full[i], "terse": split.terse[i],
                      "paraphrases": paraphrases(scene), "scene": scene.to_dict()}
            lines.append(json.dumps(record, sort_keys=True))
        (folder / "captions.jsonl").write_text("".join(line + "\n" for line in lines))
    meta = {"seed": world.seed, "image_size": world.image_size,
            "n_train": len(world.train), "n_test": len(world.test)}
    (out / "world.json").write_text(json.dumps(meta, sort_keys=True, indent=1) + "\n")
    return out


def _read_split(folder: Path) -> Split:
    records = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines() if line]
    images = [np.asarray(Image.open(folder / r["file"]).convert("RGB"), np.uint8) for r in records]
    return Split(
        images=np.stack(images) if images else np.zeros((0, 0, 0, 3), np.uint8),
        scenes=tuple(Scene.from_dict(r["scene"]) for r in records),
        full=tuple(r["full"] for r in records),
        terse=tuple(r["terse"] for r in records),
    )


def load_world(world_dir) -> World:
    root = Path(world_dir)
    meta = json.loads((root / "world.json").read_text())
    return World(seed=meta["seed"], image_size=meta["image_size"],
                 train=_read_split(root / "train"), test=_read_split(root / "test"))


# ----------------------------------------------------------------------------------------------
# Caption quality: what a generated caption gets right about a scene.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CaptionQuality:
    objects: int  # scene objects named with the right shape and colour
    colours: int  # distinct colour words that are in the scene (objects or background)
    absent: tuple[str, ...]  # shapes, colours or shape-colour pairs named that the scene lacks
    n_objects: int  # objects in the scene, for ratios

    @property
    def mentions_absent(self) -> bool:
        return bool(self.absent)


_PLURALS = {s + ("es" if s.endswith("s") else "s"): s for s in SHAPES}
_NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}
_SYNONYMS = {"grey": "gray"}
# Words after which a colour no longer describes the next shape ("red and blue star" is ambiguous).
_PHRASE_BREAKS = {"and", "with", "at", "in", "on", "of", "against", ","}


def _words(caption: str) -> list[str]:
    words = re.findall(r"[a-z]+|,", caption.lower())
    return [_SYNONYMS.get(w, w) for w in words]


def _mentions(words: list[str]):
    """(colour or None, shape, count) per shape mention, and the colour said of the background."""
    mentions, colour, count, background = [], None, 1, None
    for w in words:
        if w in COLOURS:
            colour = w
        elif w in _NUMBERS:
            count = _NUMBERS[w]
        elif w in SHAPES or w in _PLURALS:
            mentions.append((colour, _PLURALS.get(w, w), count))
            colour, count = None, 1
        elif w == "background":
            background, colour = colour, None
        elif w in _PHRASE_BREAKS:
            colour, count = None, 1
    return mentions, background


def caption_quality(caption: str, scene: Scene) -> CaptionQuality:
    words = _words(caption)
    mentions, said_background = _mentions(words)
    remaining = [(o.colour, o.shape) for o in scene.objects]
    correct, absent = 0, []
    # Coloured mentions claim their object first, so a bare "circle" cannot steal it.
    for colour, shape, count in sorted(mentions, key=lambda m: m[0] is None):
        for _ in range(count):
            match = next((p for p in remaining if p[1] == shape and colour in (None, p[0])), None)
            if match is None:
                absent.append(f"{colour} {shape}" if colour else shape)
                continue
            remaining.remove(match)
            correct += colour is not None
    scene_colours = {o.colour for o in scene.objects} | {scene.background}
    said_colours = {w for w in words if w in COLOURS}
    absent += [f"colour {c}" for c in sorted(said_colours - scene_colours)]
    if said_background is not None and said_background != scene.background:
        absent.append(f"{said_background} background")
    return CaptionQuality(objects=correct, colours=len(said_colours & scene_colours),
                          absent=tuple(absent), n_objects=len(scene.objects))
