"""Tiny converted models shared by the caption and evaluate tests of this folder."""
import pytest
import torch

from tests import factories as F
from tests.clip import tiny as tiny_clip
from tests.helpers import convert_in_process


def itm_word_tokenizer():
    """A BERT-style tokenizer small enough for the tiny Q-Former's vocabulary: the specials, digits
    and letters (whole and as continuations) and the words of the mocked COCO references."""
    from transformers import BertTokenizer

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [str(d) for d in range(10)]
    pieces += [f"##{d}" for d in range(10)] + [chr(c) for c in range(97, 123)] + ["caption", "of", "image", "w"]
    return BertTokenizer(vocab={p: i for i, p in enumerate(pieces)}, do_lower_case=True)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """A folder with `cap` (a tiny converted BLIP2 captioner), `clip` (a tiny converted OpenCLIP) and
    `itm` (a tiny converted BLIP2-ITM with a tokenizer)."""
    root = tmp_path_factory.mktemp("evalmodels")
    F.save_tiny_blip2(str(root / "cap-hf"), seed=1, eos_scale=2.0)
    convert_in_process("convert.blip2", "--src", str(root / "cap-hf"), "--dst", str(root / "cap"), "--quiet")
    config = tiny_clip.register(str(root))
    torch.save(tiny_clip.create(seed=2).state_dict(), root / "clip.pt")
    convert_in_process("convert.open_clip", "--model", tiny_clip.NAME, "--model-config", config, "--pretrained",
                       str(root / "clip.pt"), "--dst", str(root / "clip"), "--quiet")
    F.save_tiny_itm(str(root / "itm-hf"), seed=4)
    convert_in_process("convert.blip2_itm", "--src", str(root / "itm-hf"), "--dst", str(root / "itm"), "--quiet")
    itm_word_tokenizer().save_pretrained(str(root / "itm"))
    return root
