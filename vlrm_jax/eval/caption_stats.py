"""Reference-free statistics of a set of captions: length, diversity and the reward's failure modes.

RL fine-tuning with a learned reward tends to lengthen captions, narrow their vocabulary, repeat
words, hit the length limit and produce the phrases the paper penalises; these numbers show each
of those at a glance. Words, repeats and bad phrases are decided exactly as the reward decides
them (`vlrm_jax.rewards.penalties`), so a statistic here measures what the penalty saw.
"""
from __future__ import annotations

from typing import Sequence

from vlrm_jax.rewards.penalties import PenaltyRules, iter_words, repeat_char_mask

STAT_KEYS = ("mean_length", "vocabulary", "distinct_1", "distinct_2", "repeated_content_word",
             "at_length_limit", "bad_phrase")


def _share(flags: Sequence[bool]) -> float | None:
    return sum(bool(f) for f in flags) / len(flags) if flags else None


def _distinct_n(word_lists: Sequence[list[str]], n: int) -> float | None:
    """Distinct n-grams / all n-grams over the set (Li et al. 2016); n-grams never span captions."""
    ngrams = [tuple(words[i : i + n]) for words in word_lists for i in range(len(words) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else None


def caption_statistics(captions: list[str], *, at_length_limit: list[bool] | None = None,
                       rules: PenaltyRules | None = None) -> dict[str, float | None]:
    """Statistics of `captions`, keys `STAT_KEYS`: plain floats, the vocabulary an int (None where undefined).

    mean_length: words per caption (the reward's words: "close-up" and "man's" are one word).
    vocabulary: distinct lowercased words over the set.
    distinct_1 / distinct_2: distinct n-grams / all n-grams over the set (None without any).
    repeated_content_word: share of captions where a word that is not exempt occurs twice (the
      reward's `repeat` penalty would fire).
    at_length_limit: share of captions that stopped at the generation length limit without EOS,
      from the given flags; None when unknown (`at_length_limit` is None).
    bad_phrase: share of captions matching the reward's bad-phrase regex (`rules.bad_regex`, which
      also holds 4-digit years when `rules.penalise_years`).
    `rules` defaults to the paper's bad phrases and the shipped exempt words.
    """
    rules = PenaltyRules.default() if rules is None else rules
    if at_length_limit is not None and len(at_length_limit) != len(captions):
        raise ValueError(f"{len(captions)} captions but {len(at_length_limit)} at_length_limit flags")
    word_lists = [[word for _, _, word in iter_words(caption)] for caption in captions]
    bad_regex = rules.bad_regex
    return {
        "mean_length": sum(map(len, word_lists)) / len(captions) if captions else None,
        "vocabulary": len({word for words in word_lists for word in words}),
        "distinct_1": _distinct_n(word_lists, 1),
        "distinct_2": _distinct_n(word_lists, 2),
        "repeated_content_word": _share([bool(repeat_char_mask(c, rules).any()) for c in captions]),
        "at_length_limit": None if at_length_limit is None else _share(at_length_limit),
        "bad_phrase": _share([bad_regex is not None and bad_regex.search(c) is not None for c in captions]),
    }
