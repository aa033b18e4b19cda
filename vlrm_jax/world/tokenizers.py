"""Tokenizers for the shapes world, saved as Hugging Face folders (`AutoTokenizer.from_pretrained`).

- captioner / reference LM: byte-level BPE shaped like OPT's GPT2 tokenizer
  (`<s>`=0, `<pad>`=1, `</s>`=2 is BOS and EOS, `<unk>`=3; BOS prepended on encode as OPT does);
- ITM: lowercase WordPiece shaped like BLIP2-ITM's BertTokenizer ([PAD]=0, [UNK], [CLS], [SEP],
  [MASK]; encode gives [CLS] ... [SEP]);
- CLIP: open_clip's own SimpleTokenizer, unchanged (`clip_tokenizer`);
- the tiny random captioner (configs/tiny.py): a word-level tokenizer of exactly its vocabulary
  (`word_level_tokenizer`), OPT's specials first and BLIP2's `<image>` placeholder last.
The vocabularies come from the world's words, so they are small and the same for every seed.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from vlrm_jax.world import shapes

OPT_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as in facebook/opt-*
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4
IMAGE_TOKEN = "<image>"  # BLIP2's image placeholder, as in Salesforce/blip2-opt-*'s tokenizer
# Room for every world word as one token on top of the 256 byte symbols; training stops earlier
# once every word of the corpus is whole.
CAPTIONER_VOCAB_SIZE = 512
CAPTIONER_DIR = "captioner_tokenizer"
ITM_DIR = "itm_tokenizer"


# ----------------------------------------------------------------------------------------------
# The corpus the tokenizers learn from.
# ----------------------------------------------------------------------------------------------
def world_words() -> list[str]:
    """Every word a world caption can contain, in a fixed order."""
    words = list(shapes.SHAPES) + list(shapes.SIZES) + list(shapes.COLOURS)
    for text in shapes.CELL_PHRASES + shapes.FULL_TEMPLATES:
        words += re.findall(r"[a-z]+", text.replace("{objects}", "").replace("{background}", ""))
    words += ["a", "an", "and"]
    return list(dict.fromkeys(words))


def world_corpus(world: shapes.World) -> list[str]:
    """The training captions in every paraphrase plus the terse ones, then each word on its own
    (so a word that no sampled scene used still becomes a token)."""
    lines = []
    for scene, terse in zip(world.train.scenes, world.train.terse):
        lines += [shapes.full_caption(scene, t) for t in range(len(shapes.FULL_TEMPLATES))]
        lines.append(terse)
    lines += [f"a {w}" for w in world_words()]  # inside a sentence, as "Ġword"
    lines += world_words()  # at the start of a text, without the leading space
    return lines


# ----------------------------------------------------------------------------------------------
# Captioner / reference LM: OPT-style byte-level BPE.
# ----------------------------------------------------------------------------------------------
def train_byte_level_bpe(corpus: list[str], vocab_size: int = CAPTIONER_VOCAB_SIZE):
    """(vocab, merges) of a GPT2-style byte-level BPE with the OPT special tokens first."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(OPT_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return state["vocab"], merges


def captioner_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]):
    from tokenizers import AddedToken
    from transformers import GPT2Tokenizer

    tokenizer = GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_prefix_space=False,
        add_bos_token=True,  # OPT prepends </s>; transformers writes it into tokenizer.json
        clean_up_tokenization_spaces=False,  # keeps decode(encode(x)) == x
    )
    # OPT's <s> (id 0) is special too: never split, and dropped by skip_special_tokens.
    tokenizer.add_tokens([AddedToken("<s>", special=True, normalized=False)], special_tokens=True)
    return tokenizer


# ----------------------------------------------------------------------------------------------
# The tiny random captioner: words of the world, one id each.
# ----------------------------------------------------------------------------------------------
def word_level_tokenizer(words: list[str], vocab_size: int):
    """A fast tokenizer of exactly `vocab_size` ids, shaped like OPT's: `<s>` `<pad>` `</s>`
    `<unk>` (`</s>` is BOS, prepended on encode, and EOS), then `words` (cut, or filled up with
    `w<id>` so that every id the model can sample decodes to a word), then `<image>` as the last
    id, where the random captioner's config puts image_token_index."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    first_filler = len(OPT_SPECIAL_TOKENS) + len(words)
    room = vocab_size - len(OPT_SPECIAL_TOKENS) - 1
    if room < 1:
        raise ValueError(f"a vocabulary of {vocab_size} has no room for a word besides the special tokens")
    tokens = list(OPT_SPECIAL_TOKENS) + list(words[:room])
    tokens += [f"w{i}" for i in range(first_filler, vocab_size - 1)] + [IMAGE_TOKEN]
    tokenizer = Tokenizer(tok_models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins the words with spaces
    tokenizer.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                             special_tokens=[("</s>", 2)])
    # <s> and <image> never come from text and are dropped by skip_special_tokens, as in OPT / BLIP2.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t in (*OPT_SPECIAL_TOKENS, IMAGE_TOKEN)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="</s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>", clean_up_tokenization_spaces=False)


# ----------------------------------------------------------------------------------------------
# ITM: BERT-style lowercase WordPiece.
# ----------------------------------------------------------------------------------------------
def wordpiece_vocab(words: list[str]) -> dict[str, int]:
    """Specials, then every letter, digit and punctuation mark whole and as a "##" continuation
    (so any ASCII word is spelt rather than [UNK]), then the world's words."""
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    pieces = list(BERT_SPECIAL_TOKENS) + chars + ["##" + c for c in chars if c.isalnum()]
    pieces += [w for w in words if w not in pieces]
    return {p: i for i, p in enumerate(pieces)}


def itm_tokenizer(words: list[str]):
    from transformers import BertTokenizer

    # The WordPiece decoder already joins "a , b" back into "a, b"; the flag matches bert-base-uncased.
    return BertTokenizer(vocab=wordpiece_vocab(words), do_lower_case=True,
                         clean_up_tokenization_spaces=True)


# ----------------------------------------------------------------------------------------------
# CLIP: open_clip's tokenizer as is.
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClipTokenizerInfo:
    tokenizer: object  # open_clip SimpleTokenizer: tokenizer(list[str]) -> LongTensor (B, context)
    vocab_size: int
    context_length: int


def clip_tokenizer(context_length: int = 77) -> ClipTokenizerInfo:
    """open_clip's BPE tokenizer (its merges ship with the package, so nothing is downloaded)."""
    from open_clip.tokenizer import SimpleTokenizer  # lazy: pulls in torch

    tokenizer = SimpleTokenizer(context_length=context_length)
    return ClipTokenizerInfo(tokenizer, len(tokenizer.encoder), context_length)


# ----------------------------------------------------------------------------------------------
# Both folders at once.
# ----------------------------------------------------------------------------------------------
def build_tokenizers(world: shapes.World, out_dir) -> dict[str, Path]:
    out = Path(out_dir)
    vocab, merges = train_byte_level_bpe(world_corpus(world))
    paths = {"captioner": out / CAPTIONER_DIR, "itm": out / ITM_DIR}
    captioner_tokenizer(vocab, merges).save_pretrained(paths["captioner"])
    itm_tokenizer(world_words()).save_pretrained(paths["itm"])
    return paths
