"""Tiny tokenizers for the reward tests, built locally (no downloads).

- `opt_tokenizer`: byte-level BPE trained on CORPUS, special tokens laid out like OPT's
  (<s>=0, <pad>=1, </s>=2 as both BOS and EOS, <unk>=3), saved with save_pretrained.
- `bert_tokenizer`: lowercase WordPiece with [CLS] $A [SEP], like BLIP2-ITM's BERT tokenizer.
- `clip_tokenizer`: open_clip's SimpleTokenizer (its vocabulary ships with the package).
Tests build generated ids piece by piece (`token_pieces.pieces_to_ids`), so the expected arrays
depend only on the pieces, not on how BPE training happened to merge.
"""
import pytest

CORPUS = [
    "an image of a man in a green shirt is talking about his green shirt",
    "a man in a green shirt and a dog in a red car",
    "a dog and a dog on a red road on the hill",
    "a close up of a cat on a bed in 1993",
    "the camera, image of a street at night",
    "shirt, shirt. Shirt! dog Dog dog,",
    "a photo from 1993 and 2020 of a café in paris",
    "a naïve dog in a café near the river",
    "a t-shirt and a shirt with a man's hat and a man",
    "a youtube video of a cat playing with a toy",
    "a woman is talking about a blue car in a garden",
    "two people at a table with food and drinks",
    "a red bus on a city street near tall buildings",
    "a kitchen with white cabinets and a black stove",
    "a group of people standing in the snow",
    "a plate of food with broccoli and rice",
    "a bird sitting on a branch of a tree",
    "a train on the tracks near a station",
    "a boat in the water under a blue sky",
    "a child holding an umbrella in the rain",
    "a laptop on a desk next to a cup of coffee",
    "a horse in a field with a fence behind it",
    "a man riding a bike down the road often",
    "an old clock on the wall of a room",
]


@pytest.fixture(scope="session")
def opt_tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    directory = tmp_path_factory.mktemp("opt_tokenizer")
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def opt_tokenizer(opt_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(opt_tokenizer_dir)


@pytest.fixture(scope="session")
def bert_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=600, special_tokens=specials, show_progress=False
    )
    backend.train_from_iterator(CORPUS, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[(token, backend.token_to_id(token)) for token in ("[CLS]", "[SEP]")],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="session")
def clip_tokenizer():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")
