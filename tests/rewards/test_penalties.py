"""Text penalties: rules, character marks, token spans and per-token bad / repeat / noeos.

Generated ids are built from explicit pieces (see token_pieces.pieces_to_ids), so every expected
array below is hand-computed from the pieces alone.
"""
import numpy as np
import pytest

from tests.rewards.token_pieces import pieces_to_ids
from vlrm_jax.rewards import (
    PenaltyRules,
    bad_char_mask,
    batch_token_penalties,
    repeat_char_mask,
    token_penalties,
)

EOS, PAD, UNREGISTERED_SPECIAL = 2, 1, 0  # OPT layout; <s> (0) is special only in the backend
EXEMPT = PenaltyRules.default().exempt_words
TABLE1_RULES = PenaltyRules(bad_phrases=("an image of", "is talking about"), exempt_words=EXEMPT)


def marked(text, mask):
    """The marked characters of `text`, '_' elsewhere: readable expected values."""
    return "".join(ch if m else "_" for ch, m in zip(text, mask))


def penalties(tokenizer, pieces, rules=TABLE1_RULES, **kwargs):
    return token_penalties(pieces_to_ids(tokenizer, pieces), tokenizer, rules, **kwargs)


def assert_equal(actual, expected, dtype=np.float32):
    np.testing.assert_array_equal(actual, np.asarray(expected, dtype=dtype))


# --- rules ------------------------------------------------------------------------------------


def test_default_rules_load_the_shipped_lists():
    rules = PenaltyRules.default()
    assert len(rules.bad_phrases) == 212
    assert {"an image of", "camera,", ", image", "camera's view"} <= set(rules.bad_phrases)
    assert {"green", "grey", "of", "in", "a", "an", "the"} <= rules.exempt_words
    assert "shirt" not in rules.exempt_words and "and" not in rules.exempt_words
    assert rules.penalise_years


def test_user_files_replace_the_defaults(tmp_path):
    phrases = tmp_path / "bad.txt"
    phrases.write_text("# mine\n\nblue  car\n")
    words = tmp_path / "exempt.txt"
    words.write_text("# only this\nDog\n")
    rules = PenaltyRules.from_files(phrases, words)
    assert rules.bad_phrases == ("blue  car",)
    assert rules.exempt_words == frozenset({"dog"})
    text = "an image of a blue car, dog dog car green green"
    bad, repeat = bad_char_mask(text, rules), repeat_char_mask(text, rules)
    assert marked(text, bad) == "______________blue car_________________________"
    assert marked(text, repeat) == "________________________________car_______green"


def test_rules_are_hashable_and_compare_by_content():
    a = PenaltyRules(bad_phrases=["x y"], exempt_words={"A"})
    b = PenaltyRules(bad_phrases=("x y",), exempt_words=frozenset({"a"}))
    assert a == b and hash(a) == hash(b)


# --- character marks --------------------------------------------------------------------------


def test_bad_marks_respect_word_boundaries_and_case():
    # "imageof" is glued, and in "tan image of" the "an" does not start a word.
    text = "An Image of, an imageof, tan image of"
    assert marked(text, bad_char_mask(text, TABLE1_RULES)) == "An Image of" + "_" * 26


def test_bad_marks_cover_overlapping_phrases():
    rules = PenaltyRules(bad_phrases=("a close up", "close up of"), exempt_words=EXEMPT)
    text = "a close up of a cat"
    assert marked(text, bad_char_mask(text, rules)) == "a close up of______"


def test_bad_marks_for_phrases_with_punctuation_edges():
    rules = PenaltyRules(bad_phrases=("camera,", ", image"), exempt_words=EXEMPT)
    # "camera," needs a word start before it; ", image" needs no word character after it.
    text = "the camera, image; camera image; xcamera, imagex; xcamera, image"
    assert marked(text, bad_char_mask(text, rules)) == (
        "____camera, image________________________________________, image"
    )


def test_bad_marks_match_typographic_apostrophe_and_any_inner_whitespace():
    rules = PenaltyRules(bad_phrases=("camera's view",), exempt_words=EXEMPT)
    text = "camera\u2019s  view"
    assert bad_char_mask(text, rules).all()


def test_years_are_four_digit_numbers():
    rules = PenaltyRules(bad_phrases=(), exempt_words=EXEMPT)
    text = "in 1993, 12345 and 2020s or 999 (2001)"
    assert marked(text, bad_char_mask(text, rules)) == "___1993__________________________2001_"
    no_years = PenaltyRules(bad_phrases=(), exempt_words=EXEMPT, penalise_years=False)
    assert not bad_char_mask(text, no_years).any()


def test_repeat_marks_later_occurrences_of_non_exempt_words():
    text = "a dog and a dog with a red car on a red road on the hill and the dog"
    assert marked(text, repeat_char_mask(text, TABLE1_RULES)) == (
        "____________dog__________________________________________and_____dog"
    )


def test_repeat_ignores_case_and_surrounding_punctuation():
    text = "Shirt, shirt. (SHIRT)! dog Dog"
    assert marked(text, repeat_char_mask(text, TABLE1_RULES)) == "_______shirt___SHIRT_______Dog"


def test_repeat_words_keep_inner_hyphens_and_apostrophes():
    # "t-shirt" is not "shirt", "man's" is not "man"; "close-up" repeats as a whole word.
    text = "a t-shirt, a shirt, a man's hat, a man, a close-up close-up"
    assert marked(text, repeat_char_mask(text, TABLE1_RULES)) == "_" * 51 + "close-up"


def test_repeat_handles_non_ascii_words():
    text = "Café naïve café NAÏVE 日 日"
    assert marked(text, repeat_char_mask(text, TABLE1_RULES)) == "___________café_NAÏVE___日"


def test_empty_text_has_no_marks():
    assert bad_char_mask("", PenaltyRules.default()).shape == (0,)
    assert repeat_char_mask("", PenaltyRules.default()).shape == (0,)


# --- token penalties --------------------------------------------------------------------------


def test_bad_phrase_at_the_start(opt_tokenizer):
    p = penalties(opt_tokenizer, ["an", " image", " of", " a", " dog", EOS])
    assert p.text == "an image of a dog"
    assert_equal(p.bad, [1, 1, 1, 0, 0, 0])
    assert_equal(p.repeat, [0, 0, 0, 0, 0, 0])
    assert p.noeos == 0
    assert_equal(p.mask, [1, 1, 1, 1, 1, 1], bool)


def test_bad_phrase_in_the_middle_split_into_characters(opt_tokenizer):
    talking = list("talking")  # the phrase's middle word as 7 single-character tokens
    p = penalties(opt_tokenizer, ["a", " man", " is", " ", *talking, " about", " it", EOS])
    assert p.text == "a man is talking about it"
    assert_equal(p.bad, [0, 0, 1, 1, *[1] * 7, 1, 0, 0])
    assert_equal(p.repeat, [0] * 14)


def test_phrase_glued_to_a_following_word_is_not_bad(opt_tokenizer):
    p = penalties(opt_tokenizer, ["an", " image", " of", "t", "e", "n", EOS])
    assert p.text == "an image often"
    assert_equal(p.bad, [0] * 7)


def test_overlapping_bad_phrases(opt_tokenizer):
    rules = PenaltyRules(bad_phrases=("a close up", "close up of"), exempt_words=EXEMPT)
    p = penalties(opt_tokenizer, ["a", " close", " up", " of", " a", " cat", EOS], rules)
    assert_equal(p.bad, [1, 1, 1, 1, 0, 0, 0])


def test_phrases_that_start_or_end_with_punctuation(opt_tokenizer):
    rules = PenaltyRules(bad_phrases=("camera,", ", image"), exempt_words=EXEMPT)
    p = penalties(opt_tokenizer, ["the", " camera", ",", " image", " of", EOS], rules)
    assert_equal(p.bad, [0, 1, 1, 1, 0, 0])
    p = penalties(opt_tokenizer, ["the", " camera", " image", EOS], rules)
    assert_equal(p.bad, [0, 0, 0, 0])


def test_a_year_is_bad(opt_tokenizer):
    rules = PenaltyRules(bad_phrases=(), exempt_words=EXEMPT)
    pieces = ["a", " photo", " from", " 1993", " and", " ", *"12345", EOS]
    assert_equal(penalties(opt_tokenizer, pieces, rules).bad, [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])


def test_repeated_nouns(opt_tokenizer):
    p = penalties(opt_tokenizer, ["a", " dog", " and", " a", " dog", EOS])
    assert_equal(p.repeat, [0, 0, 0, 0, 1, 0])


def test_repeated_colours_prepositions_and_articles_are_free(opt_tokenizer):
    pieces = ["a", " red", " car", " on", " a", " red", " road", " on", " the", " hill", " the"]
    pieces.append(EOS)
    assert_equal(penalties(opt_tokenizer, pieces).repeat, [0] * 12)


def test_repeats_differing_in_case_or_punctuation(opt_tokenizer):
    p = penalties(opt_tokenizer, ["shirt", ",", " shirt", ".", " Shirt", "!", EOS])
    assert p.text == "shirt, shirt. Shirt!"
    assert_equal(p.repeat, [0, 0, 1, 0, 1, 0, 0])


def test_caption_cut_at_the_length_limit(opt_tokenizer):
    p = penalties(opt_tokenizer, ["a", " dog", " and", " a", " dog"], max_new_tokens=5)
    assert p.noeos == 1
    assert_equal(p.mask, [1, 1, 1, 1, 1], bool)
    assert_equal(p.repeat, [0, 0, 0, 0, 1])


def test_eos_after_the_limit_does_not_count(opt_tokenizer):
    p = penalties(opt_tokenizer, ["a", " dog", " and", " a", " dog", EOS, PAD], max_new_tokens=5)
    assert p.noeos == 1
    assert_equal(p.mask, [1, 1, 1, 1, 1, 0, 0], bool)


def test_eos_ends_the_caption(opt_tokenizer):
    p = penalties(opt_tokenizer, ["a", " dog", EOS, " dog", " dog", EOS])
    assert p.text == "a dog"
    assert_equal(p.mask, [1, 1, 1, 0, 0, 0], bool)
    assert_equal(p.repeat, [0] * 6)
    assert p.noeos == 0


def test_empty_caption(opt_tokenizer):
    p = token_penalties([EOS, PAD, PAD], opt_tokenizer, TABLE1_RULES)
    assert p.text == ""
    assert_equal(p.bad, [0, 0, 0])
    assert_equal(p.repeat, [0, 0, 0])
    assert_equal(p.mask, [1, 0, 0], bool)
    assert p.noeos == 0
    assert_equal(p.spans, [[0, 0]] * 3, np.int32)


def test_no_tokens_at_all(opt_tokenizer):
    p = token_penalties([], opt_tokenizer, TABLE1_RULES)
    assert p.text == "" and p.noeos == 1 and p.bad.shape == (0,) and p.spans.shape == (0, 2)


def test_non_ascii_characters_split_across_byte_tokens(opt_tokenizer):
    cafe = [" ", "c", "a", "f", "é".encode()]  # é = 2 byte-level tokens
    pieces = ["a", *cafe, " in", *cafe, " ", "日".encode(), " ", "日".encode(), EOS]  # 日 = 3
    p = penalties(opt_tokenizer, pieces)
    assert p.text == "a café in café 日 日"
    # a | ' ' c a f é é | in | ' ' c a f é é | ' ' 日 日 日 | ' ' 日 日 日 | EOS
    assert_equal(p.repeat, [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 0])
    assert_equal(
        p.spans,
        [[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6], [5, 6], [6, 9],
         [9, 10], [10, 11], [11, 12], [12, 13], [13, 14], [13, 14],
         [14, 15], [15, 16], [15, 16], [15, 16], [16, 17], [17, 18], [17, 18], [17, 18], [18, 18]],
        np.int32,
    )


def test_bad_phrase_with_a_split_non_ascii_character(opt_tokenizer):
    rules = PenaltyRules(bad_phrases=("naïve dog",), exempt_words=EXEMPT)
    pieces = ["a", " ", "n", "a", "ï".encode(), "v", "e", " dog", EOS]
    p = penalties(opt_tokenizer, pieces, rules)
    assert p.text == "a naïve dog"
    assert_equal(p.bad, [0, 0, 1, 1, 1, 1, 1, 1, 1, 0])


def test_special_tokens_get_empty_spans(opt_tokenizer):
    # <s> is special only inside the Rust tokenizer: it must still vanish from the text.
    p = penalties(opt_tokenizer, ["a", UNREGISTERED_SPECIAL, " dog", PAD, " dog", EOS])
    assert p.text == "a dog dog"
    assert_equal(p.spans, [[0, 1], [1, 1], [1, 5], [5, 5], [5, 9], [9, 9]], np.int32)
    assert_equal(p.repeat, [0, 0, 0, 0, 1, 0])
    assert_equal(p.mask, [1] * 6, bool)


def test_ids_beyond_the_vocabulary_get_empty_spans(opt_tokenizer):
    # OPT's LM head is wider than its vocabulary, so sampling can produce such ids.
    beyond = len(opt_tokenizer) + 10
    p = token_penalties(pieces_to_ids(opt_tokenizer, ["a", beyond, " dog", EOS]), opt_tokenizer)
    assert p.text == "a dog"
    assert_equal(p.spans, [[0, 1], [1, 1], [1, 5], [5, 5]], np.int32)


def test_explicit_eos_ids(opt_tokenizer):
    dot = opt_tokenizer.convert_tokens_to_ids(".")
    ids = pieces_to_ids(opt_tokenizer, ["a", " dog", ".", " dog"])
    p = token_penalties(ids, opt_tokenizer, TABLE1_RULES, eos_token_id=[dot, EOS])
    assert p.text == "a dog" and p.noeos == 0
    assert_equal(p.mask, [1, 1, 1, 0], bool)


# --- batch ------------------------------------------------------------------------------------


def test_batch_penalties_are_fixed_shape(opt_tokenizer):
    captions = [
        ["an", " image", " of", " a", " dog", EOS],
        ["a", " dog", " and", " a", " dog", " dog", " dog", " dog"],
        [EOS],
        ["shirt", ",", " shirt", EOS],
    ]
    length, limit = 9, 7
    ids = np.full((len(captions), length), PAD, np.int32)
    for row, pieces in enumerate(captions):
        piece_ids = pieces_to_ids(opt_tokenizer, pieces)
        ids[row, : len(piece_ids)] = piece_ids
    out = batch_token_penalties(ids, opt_tokenizer, TABLE1_RULES, max_new_tokens=limit)
    assert out.texts == ["an image of a dog", "a dog and a dog dog dog", "", "shirt, shirt"]
    assert_equal(
        out.bad,
        [[1, 1, 1, 0, 0, 0, 0, 0, 0], [0] * 9, [0] * 9, [0] * 9],
    )
    assert_equal(
        out.repeat,
        [[0] * 9, [0, 0, 0, 0, 1, 1, 1, 0, 0], [0] * 9, [0, 0, 1, 0, 0, 0, 0, 0, 0]],
    )
    assert_equal(out.noeos, [0, 1, 0, 0])
    assert_equal(
        out.mask,
        [[1] * 6 + [0] * 3, [1] * 7 + [0] * 2, [1] + [0] * 8, [1] * 4 + [0] * 5],
        bool,
    )
    for row in range(len(captions)):  # the batch path equals the single-caption path
        single = token_penalties(ids[row], opt_tokenizer, TABLE1_RULES, max_new_tokens=limit)
        assert_equal(out.bad[row], single.bad)
        assert_equal(out.repeat[row], single.repeat)


def test_missing_eos_id_is_an_error(opt_tokenizer):
    class NoEos:
        eos_token_id = None
        backend_tokenizer = opt_tokenizer.backend_tokenizer
        all_special_ids = []

    with pytest.raises(ValueError, match="eos_token_id"):
        token_penalties([5, 6], NoEos(), TABLE1_RULES)
