"""Reference-based caption metrics (BLEU-4, METEOR, ROUGE-L, CIDEr-D) through pycocoevalcap.

The numbers come from pycocoevalcap's own scorers after its own PTB tokenizer, so they can be
compared with published COCO results. Two of its parts run Java (the Stanford PTB tokenizer and
METEOR). Without Java, or when Java fails, BLEU-4 / ROUGE-L / CIDEr are still reported after a
small pure-Python tokenizer that imitates the PTB tokenizer's output on captions; METEOR is then
left out (never reported as 0) and a note says why and how to install Java.

CIDEr here is pycocoevalcap's `Cider`, which is CIDEr-D (see `cider_scorer.py`): n = 1..4 TF-IDF
vectors with each hypothesis weight clipped to the reference's (`min(hyp, ref) * ref`), a Gaussian
length penalty exp(-delta^2 / (2 sigma^2)) with sigma = 6 (its lengths count bigrams, words - 1,
so delta is the word-length difference of non-empty captions), no stemming, averaged over n and
over references and multiplied by 10. Its IDF (document frequencies) comes from the references of
the evaluated set itself, so a score depends on which images are in the set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import subprocess
import sys
import threading
from typing import Iterator, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

METRIC_KEYS = ("bleu4", "meteor", "rouge_l", "cider")
PTB_TOKENIZER = "ptb"
FALLBACK_TOKENIZER = "python-ptb-approximation (Java unavailable)"
JAVA_INSTALL_HINT = ("install a Java runtime (`apt-get install default-jre-headless`, "
                     "or `make install`, which does it)")

# What a failing Java child looks like from Python: it cannot start (OSError), its pipe breaks
# (OSError), or it answers nothing / garbage (ValueError from float(""), RuntimeError from us).
JAVA_ERRORS = (OSError, ValueError, RuntimeError, subprocess.SubprocessError)


@dataclasses.dataclass
class ReferenceScores:
    """Corpus scores, per-caption scores and how they were obtained.

    scores: metric -> corpus score, keys among `METRIC_KEYS`; a metric that could not be computed
      is absent (see `notes`), never 0.
    per_caption: metric -> one entry per input caption, None where the image has no references.
    tokenizer: `PTB_TOKENIZER`, or `FALLBACK_TOKENIZER` when Java was missing or failed.
    notes: human-readable reasons for anything missing or approximated.
    """

    scores: dict[str, float]
    per_caption: dict[str, list[float | None]]
    tokenizer: str
    notes: list[str]


def java_available() -> bool:
    """Whether a `java` executable is on PATH (a function so tests can pretend it is not)."""
    return shutil.which("java") is not None


# ---------------------------------------------------------------------------------------------
# Fallback tokenizer
# ---------------------------------------------------------------------------------------------

# Brackets become the PTB escape tokens; pycocoevalcap's removal list only has their upper-case
# forms (-LRB-), which never match after -lowerCase, so it keeps them: the fallback does the same.
_CHARACTER_MAP = str.maketrans({
    "(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- ",
    '"': " ", "\u201c": " ", "\u201d": " ", "\u201e": " ", "\u2018": "'", "\u2019": "'",
})
_OUTSIDE_BMP = re.compile("[\U00010000-\U0010ffff]")  # PTB 3.4.1 drops these ("untokenizable")
_SEPARATE_SYMBOLS = re.compile(r"-[lr][rsc]b-|-{2,}|\.{2,}|[!?]+|[;&%$*=+\\]|(?<!\d)[,:]|[,:](?!\d)")
_LEADING_PUNCTUATION = re.compile(r"^(?:[-`.]|'(?!\d))+")
_CLITIC = re.compile(r"(?<=[a-z0-9])('s|'m|'re|'ve|'ll|'d)$|(?<=[a-z])(n't)$")
_LETTER_DOT_ABBREVIATION = re.compile(r"(?:[a-z]\.)+")
_TITLE_ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr vs etc inc co ltd ave ft".split())
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na"}
_PTB_SYMBOL_FORMS = {"..": "...", "--": "--"}  # PTB writes any run of 2+ dots or dashes as these
_REMOVED_TOKENS = frozenset(PUNCTUATIONS)


def _word_tokens(piece: str) -> list[str]:
    """Tokens of one piece without spaces or separable symbols: punctuation peeled, clitics split."""
    piece = _LEADING_PUNCTUATION.sub("", piece)
    while piece and piece[-1] in "-'`.":
        if piece[-1] == "." and (_LETTER_DOT_ABBREVIATION.fullmatch(piece)
                                 or piece[:-1] in _TITLE_ABBREVIATIONS):
            break  # PTB keeps the period of "u.s.", "a.", "mr."
        piece = piece[:-1]
    if not piece:
        return []
    if piece in _SPLIT_WORDS:
        return _SPLIT_WORDS[piece].split()
    clitic = _CLITIC.search(piece)
    if clitic:
        return [piece[: clitic.start()], clitic.group()]
    return [piece]


def fallback_tokenize(caption: str) -> str:
    """Pure-Python stand-in for pycocoevalcap's PTBTokenizer on one caption.

    Rule: lowercase; brackets become -lrb- / -rrb- (kept, as pycocoevalcap keeps them); quotes
    vanish; "--", "...", runs of !/?, ; & % $ * = + \\ and commas / colons not inside numbers are
    split off; leading and trailing - ' ` . are stripped from words except the period of an
    abbreviation ("u.s.", "a.", "mr."); clitics are split ("man's" -> man 's, "don't" -> do n't,
    "cannot" -> can not); finally the tokens in pycocoevalcap's PUNCTUATIONS are removed.
    Inner hyphens, periods, slashes and apostrophes stay ("close-up", "3.5", "o'clock").
    """
    text = _OUTSIDE_BMP.sub(" ", caption.lower().translate(_CHARACTER_MAP))
    tokens: list[str] = []
    for chunk in text.split():
        for piece in _SEPARATE_SYMBOLS.sub(lambda m: f" {m.group()} ", chunk).split():
            if _SEPARATE_SYMBOLS.fullmatch(piece):
                tokens.append(_PTB_SYMBOL_FORMS.get(piece[:2], piece))
            else:
                tokens.extend(_word_tokens(piece))
    return " ".join(token for token in tokens if token not in _REMOVED_TOKENS)


# ---------------------------------------------------------------------------------------------
# Java parts, kept quiet
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence Python's stdout (Bleu prints) and file descriptor 2 (Java children inherit it)."""
    if verbose:
        yield
        return
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)


def _ptb_tokenize(texts_by_key: dict) -> dict:
    """pycocoevalcap's PTBTokenizer, checked: it silently drops lines when Java fails."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenized = PTBTokenizer().tokenize({k: [{"caption": t} for t in v] for k, v in texts_by_key.items()})
    for key, texts in texts_by_key.items():
        if len(tokenized.get(key, [])) != len(texts):
            raise RuntimeError("the Java PTB tokenizer returned fewer lines than it was given "
                               "(its error output is hidden unless verbose=True)")
    return tokenized


def _meteor_score(gts: dict, res: dict) -> tuple[float, list[float]]:
    """pycocoevalcap's Meteor, with its Java process always ended."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        score, per_image = meteor.compute_score(gts, res)
        return float(score), [float(s) for s in per_image]
    finally:
        # A failing compute_score leaves its lock held, and Meteor.__del__ would wait on it forever.
        meteor.lock = threading.Lock()
        with contextlib.suppress(OSError):  # a dead child's pipe cannot be flushed
            meteor.meteor_p.stdin.close()
        meteor.meteor_p.kill()
        meteor.meteor_p.wait()


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    """Whitespace collapsed, so that one caption is one line for the line-based PTB tokenizer."""
    return " ".join(text.split())


def reference_scores(captions: list[str], references: list[list[str]], *,
                     verbose: bool = False) -> ReferenceScores:
    """BLEU-4, METEOR, ROUGE-L and CIDEr-D of `captions[i]` against `references[i]`.

    Images without references (an empty list; blank reference strings do not count) are left out
    and counted in a note. Empty captions are valid and score 0. `verbose` lets pycocoevalcap's
    and Java's own output through.
    """
    if len(captions) != len(references):
        raise ValueError(f"{len(captions)} captions but {len(references)} reference lists")
    references = [[r for r in refs if r.strip()] for refs in references]
    scored = [i for i, refs in enumerate(references) if refs]
    notes: list[str] = []
    if not scored:
        notes.append(f"none of the {len(captions)} images has reference captions: "
                     "no reference metrics are reported")
        return ReferenceScores({}, {}, PTB_TOKENIZER, notes)
    if len(scored) < len(captions):
        notes.append(f"{len(captions) - len(scored)} of {len(captions)} images have no reference captions; "
                     f"BLEU-4 / METEOR / ROUGE-L / CIDEr are computed over the other {len(scored)}")

    raw_res = {i: [_one_line(captions[i])] for i in scored}
    raw_gts = {i: [_one_line(r) for r in references[i]] for i in scored}
    use_java = java_available()
    if not use_java:
        notes.append(f"Java was not found (no `java` on PATH): METEOR is not reported, and BLEU-4 / "
                     f"ROUGE-L / CIDEr use a pure-Python approximation of the PTB tokenizer, so they "
                     f"may differ slightly from published numbers; {JAVA_INSTALL_HINT}")

    tokenizer = PTB_TOKENIZER
    if use_java:
        try:
            with _quiet(verbose):
                tokenized = _ptb_tokenize({("res", i): raw_res[i] for i in scored}
                                          | {("gts", i): raw_gts[i] for i in scored})
            res = {i: tokenized[("res", i)] for i in scored}
            gts = {i: tokenized[("gts", i)] for i in scored}
        except JAVA_ERRORS as error:
            use_java = False
            notes.append(f"Java failed while running the PTB tokenizer ({_error_text(error)}): METEOR is "
                         f"not reported, and BLEU-4 / ROUGE-L / CIDEr use a pure-Python approximation "
                         f"of the PTB tokenizer; check or reinstall Java: {JAVA_INSTALL_HINT}")
    if not use_java:
        tokenizer = FALLBACK_TOKENIZER
        res = {i: [fallback_tokenize(c) for c in raw_res[i]] for i in scored}
        gts = {i: [fallback_tokenize(r) for r in raw_gts[i]] for i in scored}

    corpus: dict[str, float] = {}
    per_image: dict[str, list[float]] = {}
    with _quiet(verbose):
        bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=int(verbose))
    corpus["bleu4"], per_image["bleu4"] = float(bleu[3]), [float(s) for s in bleu_per_image[3]]
    if use_java:
        try:
            with _quiet(verbose):
                corpus["meteor"], per_image["meteor"] = _meteor_score(gts, res)
        except JAVA_ERRORS as error:
            notes.append(f"Java failed while running METEOR ({_error_text(error)}): METEOR is not "
                         f"reported; check or reinstall Java: {JAVA_INSTALL_HINT}")
    rouge, rouge_per_image = Rouge().compute_score(gts, res)
    corpus["rouge_l"], per_image["rouge_l"] = float(rouge), [float(s) for s in rouge_per_image]
    if any(r.strip() for refs in gts.values() for r in refs):
        cider, cider_per_image = Cider().compute_score(gts, res)
        corpus["cider"], per_image["cider"] = float(cider), [float(s) for s in cider_per_image]
    else:  # pycocoevalcap's CIDEr fails on references without a single word
        notes.append("CIDEr is not reported: no reference has a word left after tokenization")

    return ReferenceScores(
        scores={key: corpus[key] for key in METRIC_KEYS if key in corpus},
        per_caption={key: _spread(per_image[key], scored, len(captions))
                     for key in METRIC_KEYS if key in per_image},
        tokenizer=tokenizer,
        notes=notes,
    )


def _spread(values: Sequence[float], positions: Sequence[int], size: int) -> list[float | None]:
    """`values` of the scored images placed at their caption positions, None elsewhere."""
    spread: list[float | None] = [None] * size
    for position, value in zip(positions, values, strict=True):
        spread[position] = value
    return spread
