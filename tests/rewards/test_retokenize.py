"""Retokenisation for BLIP2-ITM and OpenCLIP, on the host and inside jit on an 8-device mesh."""
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from tests.rewards.token_pieces import pieces_to_ids
from vlrm_jax.rewards import PenaltyRules, Retokenizer, batch_token_penalties, retokenize_sharded

EOS, PAD = 2, 1
RULES = PenaltyRules(
    bad_phrases=("an image of", "is talking about"),
    exempt_words=PenaltyRules.default().exempt_words,
)
SOT, EOT = 49406, 49407  # open_clip's start / end of text
CAPTIONS = [
    ["a", " photo", " of", " a", " cat", EOS],
    ["an", " image", " of", " a", " dog", " and", " a", " dog", EOS],
    [" a", " dog", " and", " a", " dog", " dog", " dog", " dog", " dog", " dog"],
    [EOS],
    ["a", " man", " is", " talking", " about", " his", " shirt", ",", " shirt", EOS],
    ["a", " ", "c", "a", "f", "é".encode(), " in", " 1993", EOS],
    ["shirt", ",", " shirt", ".", " Shirt", "!", EOS],
    ["a", " red", " car", " on", " a", " red", " road", EOS],
]
LENGTH, LIMIT = 12, 10


def generated_ids(tokenizer, captions, length=LENGTH):
    ids = np.full((len(captions), length), PAD, np.int32)
    for row, pieces in enumerate(captions):
        piece_ids = pieces_to_ids(tokenizer, pieces)
        ids[row, : len(piece_ids)] = piece_ids
    return ids


@pytest.fixture(scope="module")
def retokenizer(opt_tokenizer, bert_tokenizer, clip_tokenizer):
    return Retokenizer(
        captioner_tokenizer=opt_tokenizer,
        max_new_tokens=LIMIT,
        rules=RULES,
        itm_tokenizer=bert_tokenizer,
        itm_max_length=8,
        clip_tokenizer=clip_tokenizer,
        clip_context_length=16,
    )


def test_host_result_has_penalties_and_scorer_ids(
    retokenizer, opt_tokenizer, bert_tokenizer, clip_tokenizer
):
    ids = generated_ids(opt_tokenizer, CAPTIONS)
    out = retokenizer(ids)
    penalties = batch_token_penalties(ids, opt_tokenizer, RULES, max_new_tokens=LIMIT)
    for name in ("bad", "repeat", "noeos", "mask"):
        np.testing.assert_array_equal(getattr(out, name), getattr(penalties, name))
    assert out.texts[2] == " a dog and a dog dog dog dog dog dog"  # raw text: leading space kept
    assert out.noeos.tolist() == [0, 0, 1, 0, 0, 0, 0, 0]

    def bert_ids(*tokens):
        return bert_tokenizer.convert_tokens_to_ids(list(tokens))

    cls, sep, pad = bert_ids("[CLS]", "[SEP]", "[PAD]")
    expected_itm = np.array(
        [
            [cls, *bert_ids("a", "photo", "of", "a", "cat"), sep, pad],
            [cls, *bert_ids("an", "image", "of", "a", "dog", "and"), sep],  # truncated, [SEP] kept
            [cls, *bert_ids("a", "dog", "and", "a", "dog", "dog"), sep],
            [cls, sep, pad, pad, pad, pad, pad, pad],  # empty caption
        ],
        np.int32,
    )
    np.testing.assert_array_equal(out.itm_input_ids[:4], expected_itm)
    expected_mask = (expected_itm != pad).astype(np.int32)
    np.testing.assert_array_equal(out.itm_attention_mask[:4], expected_mask)
    assert out.itm_input_ids.dtype == np.int32 and out.itm_input_ids.shape == (8, 8)

    # "a photo of a cat" in CLIP's vocabulary; context 16, zero padded
    np.testing.assert_array_equal(
        out.clip_input_ids[0], [SOT, 320, 1125, 539, 320, 2368, EOT] + [0] * 9
    )
    np.testing.assert_array_equal(out.clip_input_ids[3], [SOT, EOT] + [0] * 14)
    a, dog, and_ = (clip_tokenizer.encode(word)[0] for word in ("a", "dog", "and"))
    np.testing.assert_array_equal(  # leading space stripped, 10 words + SOT + EOT
        out.clip_input_ids[2], [SOT, a, dog, and_, a] + [dog] * 6 + [EOT] + [0] * 4
    )
    assert out.clip_input_ids.dtype == np.int32 and out.clip_input_ids.shape == (8, 16)


def test_clip_ids_are_truncated_with_eot_last(opt_tokenizer, clip_tokenizer):
    retokenizer = Retokenizer(
        opt_tokenizer, max_new_tokens=LIMIT, rules=RULES,
        clip_tokenizer=clip_tokenizer, clip_context_length=4,
    )
    out = retokenizer(generated_ids(opt_tokenizer, CAPTIONS[:1]))
    np.testing.assert_array_equal(out.clip_input_ids, [[SOT, 320, 1125, EOT]])
    assert out.itm_input_ids is None
    assert set(out.arrays()) == {"bad", "repeat", "noeos", "mask", "clip_input_ids"}


def test_default_clip_context_is_77(opt_tokenizer, clip_tokenizer):
    retokenizer = Retokenizer(opt_tokenizer, max_new_tokens=LIMIT, clip_tokenizer=clip_tokenizer)
    assert retokenizer(generated_ids(opt_tokenizer, CAPTIONS[:2])).clip_input_ids.shape == (2, 77)


@pytest.mark.parametrize(
    "mesh_shape, axis_names, batch_axes",
    [
        ((8,), ("data",), "data"),
        ((4, 2), ("data", "model"), "data"),  # each shard is decoded by both "model" devices
        ((4, 2), ("data", "fsdp"), ("data", "fsdp")),
    ],
)
def test_sharded_equals_host(retokenizer, opt_tokenizer, mesh_shape, axis_names, batch_axes):
    assert jax.device_count() == 8, "tests/conftest.py should give 8 CPU devices"
    mesh = jax.make_mesh(mesh_shape, axis_names)
    ids = generated_ids(opt_tokenizer, CAPTIONS * 2)  # B = 16: two captions per data shard
    sharding = NamedSharding(mesh, PartitionSpec(batch_axes))
    sharded_ids = jax.device_put(ids, sharding)

    run = jax.jit(lambda x: retokenize_sharded(retokenizer, x, mesh=mesh, batch_axes=batch_axes))
    out = run(sharded_ids)
    expected = retokenizer(ids).arrays()

    assert set(out) == set(expected)
    for name, value in expected.items():
        assert out[name].dtype == value.dtype, name
        np.testing.assert_array_equal(np.asarray(out[name]), value, err_msg=name)
        assert out[name].sharding.spec[0] == PartitionSpec(batch_axes)[0], name


def test_without_a_mesh_the_whole_batch_is_one_callback(retokenizer, opt_tokenizer):
    ids = generated_ids(opt_tokenizer, CAPTIONS)
    out = jax.jit(lambda x: retokenize_sharded(retokenizer, x))(ids)
    for name, value in retokenizer(ids).arrays().items():
        np.testing.assert_array_equal(np.asarray(out[name]), value, err_msg=name)
