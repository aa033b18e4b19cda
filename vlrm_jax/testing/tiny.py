"""The tiny word-level tokenizer of the tests' and benchmarks' random models."""
from __future__ import annotations

VOCAB = 96  # the tiny test models' vocabulary (tests/factories.py)


def save_tiny_tokenizer(path: str, vocab_size: int = VOCAB):
    """A word-level tokenizer whose ids cover the tiny models' vocabulary, OPT-style specials
    (<s>=0, <pad>=1, </s>=2 as BOS and EOS, <unk>=3), saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(path)
    return fast
