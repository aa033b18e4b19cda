"""Text penalties of the VLRM reward (arXiv 2404.01911, section 3.4): `bad`, `repeat` and `noeos`.

The penalties are decided on the decoded caption text and then mapped back onto the tokens that
were actually generated:

1. character marks: which characters of the text lie inside a bad phrase (or a 4-digit year) and
   which belong to a word that already occurred earlier in the caption;
2. token spans: each generated token's (start, end) character range in the decoded text, found by
   decoding every prefix of the generated ids (never by re-tokenising the text);
3. a token gets `bad` / `repeat` = 1 when its span overlaps a marked character.

What a "word" is (for `repeat`): a run of word characters (`\\w`, Unicode-aware: letters, digits,
underscore), optionally joined by inner hyphens or apostrophes, so "close-up", "t-shirt" and
"man's" are single words and differ from "close", "shirt" and "man". Words are compared lowercase,
so surrounding punctuation and case never matter ("Shirt," repeats "shirt"). The first occurrence
of a word is free; every later occurrence is penalised unless the word is exempt (colours,
prepositions, articles).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np

_ASSETS = "assets"
_BAD_PHRASES_FILE = "bad_phrases.txt"
_EXEMPT_WORDS_FILE = "exempt_words.txt"

# A word: word characters, possibly joined by inner hyphens / apostrophes (ASCII or typographic).
WORD_PATTERN = re.compile(r"\w+(?:['\u2019\-]\w+)*")
# The paper penalises years written as 4 digits ("in 1993", i.e. \b\d{4}\b); the boundary before
# it comes from the shared word-start guard in `compile_bad_regex`.
YEAR_BODY = r"\d{4}(?!\w)"


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------


def read_word_list(path: str | os.PathLike | None, default_name: str) -> list[str]:
    """Non-empty, non-comment lines of a list file (the shipped asset when `path` is None)."""
    if path is None:
        resource = importlib.resources.files("vlrm_jax").joinpath(_ASSETS, default_name)
        content = resource.read_text(encoding="utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    lines = (line.strip() for line in content.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def starts_with_word_char(text: str) -> bool:
    return re.match(r"\w", text) is not None


def phrase_body(phrase: str) -> str:
    """Regex for one bad phrase, without the boundary before it.

    A boundary is only asserted on a side that is a word character, so phrases that begin or end
    with punctuation ("camera,", ", image") still match next to punctuation. Inner whitespace
    matches any run of whitespace; an apostrophe also matches its typographic form.
    """
    pieces = [re.escape(piece) for piece in phrase.split()]
    body = r"\s+".join(pieces).replace("'", "['\u2019]")
    return body + (r"(?!\w)" if starts_with_word_char(phrase[-1]) else "")


def compile_bad_regex(bad_phrases: Sequence[str], penalise_years: bool) -> re.Pattern | None:
    r"""One case-insensitive regex that reports, at every position, the longest bad match there.

    The alternation sits in a zero-width lookahead so `finditer` visits every start position and
    overlapping phrases are all found; longest-first order makes the reported match at a position
    cover every shorter one starting there, so the union of reported matches is exact. Phrases
    that start with a word character share one `(?<!\w)` guard, which rejects positions inside a
    word once instead of once per phrase (about 5x faster on captions).
    """
    phrases = sorted({p.strip() for p in bad_phrases if p.strip()}, key=len, reverse=True)
    at_word_start = [phrase_body(p) for p in phrases if starts_with_word_char(p)]
    anywhere = [phrase_body(p) for p in phrases if not starts_with_word_char(p)]
    if penalise_years:
        at_word_start.append(YEAR_BODY)
    alternatives = list(anywhere)
    if at_word_start:
        alternatives.insert(0, r"(?<!\w)(?:" + "|".join(at_word_start) + ")")
    if not alternatives:
        return None
    return re.compile("(?=(" + "|".join(alternatives) + "))", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PenaltyRules:
    """Which text the `bad` and `repeat` terms penalise. The regex is compiled once, here."""

    bad_phrases: tuple[str, ...]
    exempt_words: frozenset[str]
    penalise_years: bool = True
    bad_regex: re.Pattern | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "bad_phrases", tuple(self.bad_phrases))
        object.__setattr__(self, "exempt_words", frozenset(w.lower() for w in self.exempt_words))
        object.__setattr__(
            self, "bad_regex", compile_bad_regex(self.bad_phrases, self.penalise_years)
        )

    @classmethod
    def from_files(
        cls,
        bad_phrases: str | os.PathLike | None = None,
        exempt_words: str | os.PathLike | None = None,
        penalise_years: bool = True,
    ) -> "PenaltyRules":
        """Rules read from list files; a file given here replaces (not extends) the shipped one."""
        return cls(
            bad_phrases=tuple(read_word_list(bad_phrases, _BAD_PHRASES_FILE)),
            exempt_words=frozenset(read_word_list(exempt_words, _EXEMPT_WORDS_FILE)),
            penalise_years=penalise_years,
        )

    @classmethod
    def default(cls) -> "PenaltyRules":
        """The paper's bad phrases (Table 6) and the shipped exempt words (read once, shared)."""
        return _default_rules()


@functools.cache
def _default_rules() -> PenaltyRules:
    return PenaltyRules.from_files()


# ---------------------------------------------------------------------------------------------
# Character marks
# ---------------------------------------------------------------------------------------------


def bad_char_mask(text: str, rules: PenaltyRules) -> np.ndarray:
    """Bool (len(text),): True for characters inside any bad-phrase or year match."""
    mask = np.zeros(len(text), dtype=bool)
    if rules.bad_regex is None:
        return mask
    for match in rules.bad_regex.finditer(text):
        mask[match.start(1) : match.end(1)] = True
    return mask


def iter_words(text: str) -> Iterable[tuple[int, int, str]]:
    """(start, end, lowercase word) for every word of `text`, in order."""
    for match in WORD_PATTERN.finditer(text):
        yield match.start(), match.end(), match.group().lower()


def repeat_char_mask(text: str, rules: PenaltyRules) -> np.ndarray:
    """Bool (len(text),): True for characters of a non-exempt word seen earlier in the text."""
    mask = np.zeros(len(text), dtype=bool)
    seen: set[str] = set()
    for start, end, word in iter_words(text):
        if word in seen and word not in rules.exempt_words:
            mask[start:end] = True
        seen.add(word)
    return mask


# ---------------------------------------------------------------------------------------------
# Token spans
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DecodedCaption:
    """One generated caption: its text and where each generated token lies in it.

    spans: int32 (T, 2) [start, end) character ranges, one per given id. Special tokens, tokens
      after EOS and tokens past `max_new_tokens` get empty ranges; tokens that together encode
      one character (a UTF-8 character split across byte-level tokens) all cover that character.
    mask: bool (T,), True for the tokens of the caption: up to and including EOS, within the limit.
    ended: whether the caption ends with EOS within the limit.
    """

    text: str
    spans: np.ndarray
    mask: np.ndarray
    ended: bool


def eos_id_set(tokenizer: Any, eos_token_id: int | Sequence[int] | None) -> frozenset[int]:
    """The ids that end a caption: `eos_token_id` when given, else the tokenizer's EOS."""
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id explicitly")
    if isinstance(eos_token_id, (int, np.integer)):
        return frozenset([int(eos_token_id)])
    return frozenset(int(i) for i in eos_token_id)


def caption_length(ids: Sequence[int], eos_ids: frozenset[int], limit: int) -> tuple[int, bool]:
    """(number of caption tokens including EOS, whether EOS was found) within the first `limit`."""
    for position, token in enumerate(ids[:limit]):
        if token in eos_ids:
            return position + 1, True
    return min(limit, len(ids)), False


def common_prefix_length(a: str, b: str) -> int:
    if b.startswith(a):  # the usual case, decided in C
        return len(a)
    return len(os.path.commonprefix([a, b]))


def spans_from_prefix_texts(prefix_texts: Sequence[str]) -> np.ndarray:
    """(n, 2) spans of n text tokens, given the decodings of their n prefixes.

    A prefix decoding can end with text that is not final yet (a U+FFFD for a character whose
    bytes are still incomplete); only its common prefix with the full text counts as settled. A
    token whose text is not settled by its own prefix extends its span to where the text becomes
    settled, so all tokens of one split character share that character.
    """
    n = len(prefix_texts)
    spans = np.zeros((n, 2), dtype=np.int32)
    if n == 0:
        return spans
    full = prefix_texts[-1]
    settled = np.zeros(n, dtype=np.int64)
    pending = np.zeros(n, dtype=bool)
    for k, prefix in enumerate(prefix_texts):
        settled[k] = common_prefix_length(prefix, full)
        pending[k] = len(prefix) > settled[k]
    settled = np.maximum.accumulate(settled)
    starts = np.concatenate([[0], settled[:-1]])
    ends = settled.copy()
    for k in range(n - 2, -1, -1):  # a pending token ends where its successor's text settles
        if pending[k]:
            ends[k] = ends[k + 1]
    spans[:, 0], spans[:, 1] = starts, ends
    return spans


def decode_with_spans_batch(
    tokenizer: Any,
    ids_batch: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
) -> list[DecodedCaption]:
    """Decode generated captions and locate each generated token in its caption's text.

    `tokenizer` is a Hugging Face fast tokenizer (its Rust `backend_tokenizer` does the decoding).
    `ids_batch` holds the newly generated ids only (no prompt): the first EOS ends a caption, so
    with OPT (whose BOS is also `</s>`) a leading BOS must not be passed. Decoding skips special
    tokens and never "cleans up" spaces, so prefixes stay prefixes; ids outside the vocabulary (a
    padded LM head) decode to nothing. All prefixes of all captions are decoded in one call to the
    Rust tokenizer.
    """
    backend = tokenizer.backend_tokenizer
    eos_ids = eos_id_set(tokenizer, eos_token_id)
    special_ids = frozenset(tokenizer.all_special_ids) | eos_ids

    plans = []  # per caption: (ids, caption length, ended, positions of text tokens)
    prefixes: list[list[int]] = []
    for ids in ids_batch:
        ids = [int(i) for i in ids]
        limit = len(ids) if max_new_tokens is None else max_new_tokens
        length, ended = caption_length(ids, eos_ids, limit)
        text_positions = [p for p in range(length) if ids[p] not in special_ids]
        text_ids = [ids[p] for p in text_positions]
        prefixes.extend(text_ids[: k + 1] for k in range(len(text_ids)))
        plans.append((ids, length, ended, text_positions))

    decoded = backend.decode_batch(prefixes, skip_special_tokens=True) if prefixes else []

    captions, offset = [], 0
    for ids, length, ended, text_positions in plans:
        prefix_texts = decoded[offset : offset + len(text_positions)]
        offset += len(text_positions)
        text = prefix_texts[-1] if prefix_texts else ""
        captions.append(
            DecodedCaption(
                text=text,
                spans=place_spans(len(ids), text_positions, spans_from_prefix_texts(prefix_texts)),
                mask=np.arange(len(ids)) < length,
                ended=ended,
            )
        )
    return captions


def place_spans(num_ids: int, text_positions: Sequence[int], text_spans: np.ndarray) -> np.ndarray:
    """Spans for all ids: text tokens get theirs; every other id an empty span where it stands."""
    spans = np.zeros((num_ids, 2), dtype=np.int32)
    cursor, next_text = 0, 0
    for position in range(num_ids):
        if next_text < len(text_positions) and text_positions[next_text] == position:
            spans[position] = text_spans[next_text]
            cursor = int(text_spans[next_text, 1])
            next_text += 1
        else:
            spans[position] = (cursor, cursor)
    return spans


# ---------------------------------------------------------------------------------------------
# Token penalties
# ---------------------------------------------------------------------------------------------


def overlaps(char_mask: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """Float32 (T,): 1 where a span contains at least one marked character."""
    counts = np.concatenate([[0], np.cumsum(char_mask, dtype=np.int64)])
    return (counts[spans[:, 1]] > counts[spans[:, 0]]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class TokenPenalties:
    """Penalties of one caption. Arrays have one entry per given id; zero outside `mask`."""

    text: str
    spans: np.ndarray  # int32 (T, 2)
    bad: np.ndarray  # float32 (T,)
    repeat: np.ndarray  # float32 (T,)
    noeos: np.float32  # 1.0 when the caption has no EOS within the length limit
    mask: np.ndarray  # bool (T,)


def penalties_of(caption: DecodedCaption, rules: PenaltyRules) -> TokenPenalties:
    return TokenPenalties(
        text=caption.text,
        spans=caption.spans,
        bad=overlaps(bad_char_mask(caption.text, rules), caption.spans),
        repeat=overlaps(repeat_char_mask(caption.text, rules), caption.spans),
        noeos=np.float32(not caption.ended),
        mask=caption.mask,
    )


def token_penalties(
    ids: Sequence[int],
    tokenizer: Any,
    rules: PenaltyRules | None = None,
    *,
    max_new_tokens: int | None = None,
    eos_token_id: int | Sequence[int] | None = None,
) -> TokenPenalties:
    """Per-token `bad` / `repeat` and the caption's `noeos` for one generated caption.

    `max_new_tokens` is the generation limit (default: len(ids)); noeos = 1 when no EOS occurs
    within it, which is the paper's noeos(t_1..t_n) = [t_n != eos].
    """
    rules = PenaltyRules.default() if rules is None else rules
    (caption,) = decode_with_spans_batch(
        tokenizer, [ids], max_new_tokens=max_new_tokens, eos_token_id=eos_token_id
    )
    return penalties_of(caption, rules)


@dataclasses.dataclass(frozen=True)
class BatchPenalties:
    """Fixed-shape penalties of a batch of B captions of T generated ids."""

    bad: np.ndarray  # float32 (B, T)
    repeat: np.ndarray  # float32 (B, T)
    noeos: np.ndarray  # float32 (B,)
    mask: np.ndarray  # bool (B, T): tokens up to and including EOS, within max_new_tokens
    texts: list[str]


def batch_token_penalties(
    ids: np.ndarray,
    tokenizer: Any,
    rules: PenaltyRules | None = None,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
) -> BatchPenalties:
    """`token_penalties` for (B, T) generated ids, as fixed-shape numpy arrays."""
    rules = PenaltyRules.default() if rules is None else rules
    ids = np.asarray(ids)
    captions = decode_with_spans_batch(
        tokenizer, ids.tolist(), max_new_tokens=max_new_tokens, eos_token_id=eos_token_id
    )
    per_caption = [penalties_of(c, rules) for c in captions]
    batch, length = ids.shape

    def stacked(name: str, dtype) -> np.ndarray:
        if not per_caption:
            return np.zeros((0, length), dtype=dtype)
        return np.stack([getattr(p, name) for p in per_caption]).astype(dtype)

    return BatchPenalties(
        bad=stacked("bad", np.float32),
        repeat=stacked("repeat", np.float32),
        noeos=np.array([p.noeos for p in per_caption], dtype=np.float32).reshape(batch),
        mask=stacked("mask", bool),
        texts=[p.text for p in per_caption],
    )
