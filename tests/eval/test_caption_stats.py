"""caption_statistics: hand-computed values for every key."""
import pytest

from vlrm_jax.eval.caption_stats import STAT_KEYS, caption_statistics
from vlrm_jax.rewards.penalties import PenaltyRules

CAPTIONS = [
    "A close-up of a dog on the grass",  # 8 words; "close-up" is a bad phrase; "a" x2 is exempt
    "A white dog and a white cat on the white sofa",  # 11 words; "white" x3, "a" x2: exempt
    "a dog chasing another Dog",  # 5 words; "dog" x2 (case ignored) is a content repeat
    "",
]
# Words over the set: 24. Distinct words, in order of appearance: a close-up of dog on the grass
# (7), white and cat sofa (+4), chasing another (+2) = 13.
# Bigrams: 7 + 10 + 4 = 21; repeats: (a, white) inside caption 1, (on, the) and (a, dog) across
# captions, so 18 distinct.


def test_hand_computed_values():
    stats = caption_statistics(CAPTIONS, at_length_limit=[False, True, False, False])
    assert list(stats) == list(STAT_KEYS)
    assert stats == {
        "mean_length": pytest.approx(24 / 4),
        "vocabulary": 13.0,
        "distinct_1": pytest.approx(13 / 24),
        "distinct_2": pytest.approx(18 / 21),
        "repeated_content_word": pytest.approx(1 / 4),
        "at_length_limit": pytest.approx(1 / 4),
        "bad_phrase": pytest.approx(1 / 4),
    }
    assert type(stats.pop("vocabulary")) is int  # a count
    assert all(type(value) is float for value in stats.values())


def test_length_limit_unknown():
    assert caption_statistics(CAPTIONS)["at_length_limit"] is None


def test_bad_phrase_includes_years_and_ignores_longer_words():
    stats = caption_statistics(["a dog in 1993", "a closet", "a photo of a dog"])
    assert stats["bad_phrase"] == pytest.approx(2 / 3)  # a year and "photo of", not "closet"


def test_rules_are_the_given_ones():
    rules = PenaltyRules(bad_phrases=("dog",), exempt_words=frozenset(), penalise_years=False)
    stats = caption_statistics(CAPTIONS, rules=rules)
    assert stats["bad_phrase"] == pytest.approx(3 / 4)
    assert stats["repeated_content_word"] == pytest.approx(3 / 4)  # "a" and "white" count now


def test_empty_set_and_empty_captions():
    assert caption_statistics([]) == {
        "mean_length": None, "vocabulary": 0.0, "distinct_1": None, "distinct_2": None,
        "repeated_content_word": None, "at_length_limit": None, "bad_phrase": None,
    }
    stats = caption_statistics(["", ""], at_length_limit=[True, False])
    assert stats["mean_length"] == 0.0 and stats["distinct_1"] is None
    assert stats["at_length_limit"] == 0.5 and stats["repeated_content_word"] == 0.0


def test_flags_must_match_captions():
    with pytest.raises(ValueError, match="2 captions but 1 at_length_limit flags"):
        caption_statistics(["a", "b"], at_length_limit=[True])
