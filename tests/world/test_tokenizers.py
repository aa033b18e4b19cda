"""World tokenizers: OPT-shaped byte-level BPE, BERT-shaped WordPiece, open_clip's tokenizer."""
import pytest
from transformers import AutoTokenizer

from vlrm_jax.world import shapes
from vlrm_jax.world.shapes import generate_world, paraphrases
from vlrm_jax.world.tokenizers import build_tokenizers, clip_tokenizer, world_words


@pytest.fixture(scope="module")
def world():
    return generate_world(seed=0, n_train=150, n_test=50, image_size=8, supersample=1)


@pytest.fixture(scope="module")
def tokenizer_dirs(world, tmp_path_factory):
    return build_tokenizers(world, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def all_captions(world):
    captions = []
    for split in (world.train, world.test):
        for scene, full, terse in zip(split.scenes, split.full, split.terse):
            captions += [full, terse, *paraphrases(scene)]
    return captions


def test_build_is_deterministic(world, tokenizer_dirs, tmp_path):
    again = build_tokenizers(world, tmp_path)
    for name, folder in tokenizer_dirs.items():
        files = sorted(p.name for p in folder.iterdir())
        assert files == sorted(p.name for p in again[name].iterdir()) and "tokenizer.json" in files
        for f in files:
            assert (folder / f).read_bytes() == (again[name] / f).read_bytes(), (name, f)


def test_captioner_tokenizer_is_shaped_like_opt(tokenizer_dirs):
    tok = AutoTokenizer.from_pretrained(tokenizer_dirs["captioner"])
    assert type(tok).__name__ == "GPT2Tokenizer"
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<s>", "<pad>", "</s>", "<unk>")}
    assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("</s>", "</s>", "<pad>", "<unk>")
    assert 300 <= len(tok) <= 600
    encoded = tok("a red circle").input_ids
    assert encoded[0] == 2 and encoded.count(2) == 1, "BOS first, no EOS appended (as OPT)"
    assert tok("<s>").input_ids == [2, 0]


def test_captioner_round_trips_every_world_caption(tokenizer_dirs, all_captions):
    tok = AutoTokenizer.from_pretrained(tokenizer_dirs["captioner"])
    batch = tok(all_captions).input_ids
    for caption, ids in zip(all_captions, batch):
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == caption
        # Each world word (and each comma) is a single token: short sequences for tiny models.
        assert len(ids) == 1 + len(caption.split()) + caption.count(","), caption


def test_captioner_round_trips_text_outside_the_world(tokenizer_dirs):
    tok = AutoTokenizer.from_pretrained(tokenizer_dirs["captioner"])
    text = "A Zebra, 1999 -- naïve café!"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


def test_itm_tokenizer_is_shaped_like_bert(tokenizer_dirs):
    tok = AutoTokenizer.from_pretrained(tokenizer_dirs["itm"])
    assert type(tok).__name__ == "BertTokenizer"
    specials = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert [tok.convert_tokens_to_ids(t) for t in specials] == [0, 1, 2, 3, 4]
    assert tok.pad_token_id == 0 and tok.cls_token_id == 2 and tok.sep_token_id == 3
    ids = tok("A Red CIRCLE").input_ids
    assert ids == tok("a red circle").input_ids, "lowercases"
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "a", "red", "circle", "[SEP]"]
    assert tok.convert_ids_to_tokens(tok("zebra").input_ids)[1:3] == ["z", "##e"]  # spelt, not [UNK]


def test_itm_round_trips_every_world_caption(tokenizer_dirs, all_captions):
    tok = AutoTokenizer.from_pretrained(tokenizer_dirs["itm"])
    for caption, ids in zip(all_captions, tok(all_captions).input_ids):
        assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == caption


def test_every_world_word_is_whole_in_both_vocabularies(tokenizer_dirs):
    captioner = AutoTokenizer.from_pretrained(tokenizer_dirs["captioner"])
    itm = AutoTokenizer.from_pretrained(tokenizer_dirs["itm"])
    for word in world_words():
        assert word in itm.get_vocab() and "Ġ" + word in captioner.get_vocab(), word
    assert set(shapes.COLOURS) | set(shapes.SHAPES) <= set(world_words())


def test_clip_tokenizer_is_open_clips():
    info = clip_tokenizer()
    assert (info.vocab_size, info.context_length) == (49408, 77)
    tokens = info.tokenizer(["a red circle at the top left"])
    assert tuple(tokens.shape) == (1, 77)
    sot, eot = info.tokenizer.sot_token_id, info.tokenizer.eot_token_id
    row = tokens[0].tolist()
    assert row[0] == sot and eot in row and row.index(eot) == 1 + 7  # one BPE token per word here
    assert clip_tokenizer(context_length=32).tokenizer(["a red circle"]).shape[1] == 32
