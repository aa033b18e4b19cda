"""CHAIR: how often captions name objects the image does not hold (Rohrbach et al., EMNLP 2018).

A caption's object mentions are found by matching its words against a vocabulary of synonyms for a
fixed set of object classes (COCO's 80 by default, `assets/chair_synonyms.txt`); a mention is
hallucinated when its class is not in the image's ground truth. From the paper:

- CHAIR_s: share of captions with at least one hallucinated mention;
- CHAIR_i: hallucinated mentions / all mentions. Like the original code (utils/chair.py of
  github.com/LisaAnne/Hallucination) every mention counts, so "a dog and another dog" is two
  mentions; `once_per_caption=True` counts each class once per caption instead;
- ground truth: the image's annotated objects, united with the objects its reference captions name
  when those are given (the original takes both, so a reference's "bench" of an unlabelled bench
  is not a hallucination).

Words are lower-case runs of letters. Each word is singularised (irregular plurals, then suffix
rules), keeping the first candidate the vocabulary knows, so no corpus is needed at run time.
Phrases are matched longest first, left to right: "hot dog" before "dog".

COCO special cases, from the original's rules:
- kept: an animal word after "baby"/"adult" names the animal, not a person ("baby elephant"),
  widened to "mother"/"male"/"female" (also person words in the table) and to every synonym of
  the ten animal classes; "baby animal"/"baby cub" name nothing (no COCO class);
- kept: "passenger" before a vehicle word names the vehicle (the original: jet and train; here
  every synonym of airplane, bus, train, car and boat);
- kept: "train track" names nothing (tracks are not a train); "toilet seat" names the toilet, and
  "seat" is not a chair in a caption that names a toilet ("the seat of the toilet is up");
- not needed: "bow tie" is a tie synonym in the table, and "wine glas" only undid the original
  singulariser's "glass" -> "glas"; dropped: "home plate" (neither word names a class).
Known limits shared with the original: "orange" the colour reads as the fruit, "mouse" the animal
as the computer mouse, "table" always as a dining table.
"""
from __future__ import annotations

import functools
import importlib.resources
import re
from typing import Iterable, Mapping, Sequence

_ASSETS = "assets"
_SYNONYMS_FILE = "chair_synonyms.txt"
_WORD = re.compile(r"[a-z]+")

# Irregular plurals; each also works as a suffix ("policemen", "grandchildren").
IRREGULAR_PLURALS = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "mice": "mouse",
    "lice": "louse", "geese": "goose", "teeth": "tooth", "feet": "foot", "oxen": "ox", "dice": "die",
    "cacti": "cactus", "octopi": "octopus", "fungi": "fungus", "passersby": "passerby",
}
_ES_STEMS = ("s", "x", "z", "ch", "sh", "o")  # "buses", "boxes", "benches", "brushes", "tomatoes"

# COCO-specific rules (see the module docstring).
ANIMAL_CLASSES = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
ANIMAL_QUALIFIERS = ("baby", "adult", "mother", "male", "female")
VEHICLE_CLASSES = ("airplane", "bus", "train", "car", "boat")


def singular_candidates(word: str) -> list[str]:
    """Possible singulars of `word`, most likely first (the word itself not included)."""
    out = []
    for plural, singular in IRREGULAR_PLURALS.items():
        if word.endswith(plural):
            out.append(word[: len(word) - len(plural)] + singular)
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        stem = word[:-1]
        if word.endswith("ies"):
            out += [word[:-3] + "y", word[:-3] + "ie"]
        out.append(stem)
        if word.endswith("es") and word[:-2].endswith(_ES_STEMS):
            out.append(word[:-2])
        if word.endswith("ves"):
            out += [word[:-3] + "f", word[:-3] + "fe"]
    return out


def words_of(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class ObjectVocabulary:
    """Maps words and phrases to object classes; a phrase mapped to None names no object but is
    still consumed whole, which keeps its words from matching on their own ("train track").

    ignored_with: {phrase: class}, a mention made by `phrase` does not count in a caption that
    also names `class` ({"seat": "toilet"}).
    """

    def __init__(self, synonyms: Mapping[str, str | None], ignored_with: Mapping[str, str] | None = None):
        self.phrases: dict[tuple[str, ...], str | None] = {}
        for phrase, name in synonyms.items():
            key = tuple(words_of(phrase))
            if not key:
                raise ValueError(f"synonym {phrase!r} has no words")
            if self.phrases.get(key, name) != name:
                raise ValueError(f"synonym {phrase!r} maps to both {self.phrases[key]!r} and {name!r}")
            self.phrases[key] = name
        self.classes = frozenset(name for name in self.phrases.values() if name is not None)
        self.ignored_with = {tuple(words_of(p)): c for p, c in (ignored_with or {}).items()}
        unknown = set(self.ignored_with.values()) - self.classes
        if unknown:
            raise ValueError(f"ignored_with names classes not in the vocabulary: {sorted(unknown)}")
        self._known = {w for key in self.phrases for w in key}
        self._longest = max((len(key) for key in self.phrases), default=1)
        self._lemmas: dict[str, str] = {}

    @classmethod
    def from_table(cls, lines: Iterable[str], **kwargs) -> "ObjectVocabulary":
        return cls(parse_synonym_table(lines), **kwargs)

    def lemma(self, word: str) -> str:
        """`word` if the vocabulary knows it, else its first singular that it knows, else `word`."""
        if word not in self._lemmas:
            known = [c for c in singular_candidates(word) if c in self._known]
            self._lemmas[word] = word if word in self._known or not known else known[0]
        return self._lemmas[word]

    def matches(self, caption: str) -> list[tuple[tuple[str, ...], str]]:
        """(phrase, class) per object mention, in order, before `ignored_with` applies."""
        words = [self.lemma(w) for w in words_of(caption)]
        out, i = [], 0
        while i < len(words):
            for n in range(min(self._longest, len(words) - i), 0, -1):
                key = tuple(words[i:i + n])
                if key in self.phrases:
                    if self.phrases[key] is not None:
                        out.append((key, self.phrases[key]))
                    i += n
                    break
            else:
                i += 1
        return out


def parse_synonym_table(lines: Iterable[str]) -> dict[str, str]:
    """{synonym: class} from "class, synonym, synonym" lines; '#' lines and blank lines skipped."""
    synonyms: dict[str, str] = {}
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        names = [w.strip().lower() for w in line.split(",") if w.strip()]
        for word in names:
            if synonyms.get(word, names[0]) != names[0]:
                raise ValueError(f"{word!r} is listed under both {synonyms[word]!r} and {names[0]!r}")
            synonyms[word] = names[0]
    return synonyms


def coco_synonym_table() -> list[str]:
    """The lines of the shipped CHAIR synonym table."""
    resource = importlib.resources.files("vlrm_jax").joinpath(_ASSETS, _SYNONYMS_FILE)
    return resource.read_text(encoding="utf-8").splitlines()


def coco_special_phrases(synonyms: Mapping[str, str]) -> dict[str, str | None]:
    """The phrases of the COCO special cases, given the table's {synonym: class}."""
    out: dict[str, str | None] = {"train track": None, "toilet seat": "toilet"}
    animals = [(w, c) for w, c in synonyms.items() if c in ANIMAL_CLASSES] + [("animal", None), ("cub", None)]
    for qualifier in ANIMAL_QUALIFIERS:
        out.update({f"{qualifier} {word}": name for word, name in animals})
    out.update({f"passenger {w}": c for w, c in synonyms.items() if c in VEHICLE_CLASSES})
    return out


@functools.cache
def coco_vocabulary() -> ObjectVocabulary:
    """COCO's 80 classes with the CHAIR synonyms and special cases (built once)."""
    synonyms: dict[str, str | None] = dict(parse_synonym_table(coco_synonym_table()))
    synonyms.update(coco_special_phrases(synonyms))
    return ObjectVocabulary(synonyms, ignored_with={"seat": "toilet"})


def mentioned_objects(caption: str, vocab: ObjectVocabulary | None = None) -> list[str]:
    """The object classes `caption` names, one entry per mention, in order."""
    vocab = coco_vocabulary() if vocab is None else vocab
    found = vocab.matches(caption)
    named = {name for _, name in found}
    return [name for phrase, name in found if vocab.ignored_with.get(phrase) not in named]


def _class_sets(annotated, vocab: ObjectVocabulary, what: str) -> list[set[str]]:
    out = []
    for i, names in enumerate(annotated):
        if isinstance(names, str):
            raise ValueError(f"{what}[{i}] is the string {names!r}; expected an iterable of class names")
        names = set(names)
        unknown = names - vocab.classes
        if unknown:
            raise ValueError(f"{what}[{i}] holds class names not in the vocabulary: {sorted(unknown)}")
        out.append(names)
    return out


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def chair(captions: Sequence[str], annotated: Sequence[Iterable[str]], vocab: ObjectVocabulary | None = None,
          reference_captions: Sequence[Iterable[str]] | None = None, *, once_per_caption: bool = False) -> dict:
    """CHAIR_s, CHAIR_i and object coverage of `captions`, one per image.

    annotated: per caption, the class names the image holds (its object annotations; repeats are
    fine). reference_captions: per caption, the image's reference captions; the objects they name
    join the ground truth for hallucination (not for coverage). coverage: annotated objects the
    captions name / annotated objects, pooled over the set. Ratios with nothing to count are NaN.
    Returns chair_s, chair_i, coverage (floats) and captions, hallucinated_captions, mentions,
    hallucinated (ints).
    """
    vocab = coco_vocabulary() if vocab is None else vocab
    if len(annotated) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(annotated)} annotated object lists")
    if reference_captions is not None and len(reference_captions) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(reference_captions)} reference caption lists")
    annotated_sets = _class_sets(annotated, vocab, "annotated")
    mentions = hallucinated = bad_captions = named_annotated = total_annotated = 0
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise ValueError(f"captions[{i}] is {type(caption).__name__}, not str")
        truth = set(annotated_sets[i])
        if reference_captions is not None:
            refs = reference_captions[i]
            if isinstance(refs, str):
                raise ValueError(f"reference_captions[{i}] is a string; expected an iterable of captions")
            truth.update(name for ref in refs for name in mentioned_objects(ref, vocab))
        named = mentioned_objects(caption, vocab)
        if once_per_caption:
            named = list(dict.fromkeys(named))
        wrong = sum(name not in truth for name in named)
        mentions += len(named)
        hallucinated += wrong
        bad_captions += wrong > 0
        named_annotated += len(set(named) & annotated_sets[i])
        total_annotated += len(annotated_sets[i])
    return {
        "chair_s": _ratio(bad_captions, len(captions)),
        "chair_i": _ratio(hallucinated, mentions),
        "coverage": _ratio(named_annotated, total_annotated),
        "captions": len(captions),
        "hallucinated_captions": bad_captions,
        "mentions": mentions,
        "hallucinated": hallucinated,
    }
