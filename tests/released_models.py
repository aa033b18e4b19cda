"""The released checkpoints' widths (convert/released_shapes.py) cut to a few layers per tower, with
random weights, written by transformers itself into folders a user would convert, with
tokenizers of the released vocabulary sizes built offline (no hub is reachable here).

- captioner: Blip2ForConditionalGeneration at blip2-opt-2.7b's widths (ViT-g 1408, Q-Former 768,
  OPT 2560, vocabulary 50272) and an OPT-shaped byte-level BPE of exactly 50265 tokens;
- ITM: Blip2ForImageTextRetrieval at blip2-itm-vit-g's widths whose ViT trunk is the captioner's
  (as in the released pair: each keeps its own final LayerNorm) and a BERT WordPiece of 30522 tokens.
"""
from __future__ import annotations

import itertools
import string
from pathlib import Path

OPT_TOKENIZER_SIZE = 50265  # facebook/opt-*'s vocab.json (the LM head pads it to 50272)
BERT_TOKENIZER_SIZE = 30522  # bert-base-uncased (the released Q-Former embeds 30523: [DEC] added)
# Every weight normal(0, 0.02), norm scales 1 + that (tests.factories.randomise): transformers'
# own init leaves the ViT at 1e-10 (Blip2VisionConfig.initializer_range) and norms constant, which
# would hide a dropped weight; 0.02 keeps activations and logits around 1 in bf16.
INIT_STD = 0.02


def cut(hf_cfg, layers: int):
    """A transformers Blip2Config with every tower cut to `layers` layers, widths unchanged."""
    for sub in ("vision_config", "qformer_config", "text_config"):
        part = getattr(hf_cfg, sub, None)
        if part is not None:
            part.num_hidden_layers = layers
    return hf_cfg


def opt_tokenizer(size: int = OPT_TOKENIZER_SIZE):
    """OPT's specials (<s>=0, <pad>=1, </s>=2 as BOS and EOS, <unk>=3), the 256 byte symbols,
    then merges of two symbols ("Ġ" and letters first, so ASCII text gets multi-byte tokens)
    until the vocabulary has `size` tokens."""
    from tokenizers import pre_tokenizers

    from vlrm_jax.world.tokenizers import OPT_SPECIAL_TOKENS, captioner_tokenizer

    first = ["Ġ", *string.ascii_lowercase, *string.ascii_uppercase, *string.digits]
    symbols = first + sorted(set(pre_tokenizers.ByteLevel.alphabet()) - set(first))
    vocab = {t: i for i, t in enumerate([*OPT_SPECIAL_TOKENS, *symbols])}
    merges = []
    for a, b in itertools.product(symbols, symbols):
        if len(vocab) == size:
            break
        merges.append((a, b))
        vocab[a + b] = len(vocab)
    tokenizer = captioner_tokenizer(vocab, merges)
    assert len(tokenizer) == size, len(tokenizer)
    return tokenizer


def bert_tokenizer(size: int = BERT_TOKENIZER_SIZE):
    """[PAD]=0, [UNK], [CLS], [SEP], [MASK], characters (vlrm_jax.world.tokenizers.wordpiece_vocab),
    then two- and three-letter words and "##" pieces until the vocabulary has `size` tokens."""
    from vlrm_jax.world.tokenizers import itm_tokenizer, wordpiece_vocab

    room = size - len(wordpiece_vocab([]))
    pieces = ("".join(c) for n in (2, 3) for c in itertools.product(string.ascii_lowercase, repeat=n))
    words = list(itertools.islice((w for p in pieces for w in (p, "##" + p)), room))
    tokenizer = itm_tokenizer(words)
    assert len(tokenizer) == size, len(tokenizer)
    return tokenizer


def save_captioner(folder, layers: int = 2, seed: int = 0) -> dict:
    """blip2-opt-2.7b's widths, `layers` per tower, random weights; returns the ViT's state
    dict (the ITM's trunk)."""
    from transformers import Blip2ForConditionalGeneration

    from convert.released_shapes import blip2_opt_2_7b
    from tests.factories import randomise

    model = randomise(Blip2ForConditionalGeneration(cut(blip2_opt_2_7b(), layers)), seed, INIT_STD)
    model.save_pretrained(folder)
    opt_tokenizer().save_pretrained(folder)
    vision = {k: v.clone() for k, v in model.vision_model.state_dict().items()}
    del model
    return vision


def save_itm(folder, vision: dict, layers: int = 2, seed: int = 1) -> None:
    """blip2-itm-vit-g's widths, `layers` per tower, random weights; its ViT is `vision` (the
    captioner's) but for its own final LayerNorm, as in the released pair."""
    from transformers import Blip2ForImageTextRetrieval

    from convert.released_shapes import blip2_itm_vit_g
    from tests.factories import randomise

    model = randomise(Blip2ForImageTextRetrieval(cut(blip2_itm_vit_g(), layers)), seed, INIT_STD)
    trunk = {k: v for k, v in vision.items() if not k.startswith("post_layernorm.")}
    missing, unexpected = model.vision_model.load_state_dict(trunk, strict=False)
    assert not unexpected and all(k.startswith("post_layernorm.") for k in missing), (missing, unexpected)
    model.save_pretrained(folder)
    bert_tokenizer().save_pretrained(folder)
    del model


def save_images(folder, count: int = 4, seed: int = 0) -> str:
    """A folder of `count` small PNGs of noise, of different shapes (the preprocessing resizes)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(48 + 16 * i, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return str(folder)


HF_DIRS = {"captioner": "hf/blip2-opt-2.7b", "itm": "hf/blip2-itm-vit-g"}
CONVERTERS = {"captioner": "convert.blip2", "itm": "convert.blip2_itm"}


def released_folders(root, layers: int = 2) -> dict[str, str]:
    """Both transformers folders written under root/hf by a separate process (torch's 1.8 GB go
    with it), converted as a user converts them (`python -m convert.blip2` / `convert.blip2_itm`)
    into root/captioner and root/itm; the transformers folders are then deleted (1.9 GB)."""
    import shutil

    from tests.helpers import run_module

    root = Path(root)
    run_module("tests.released_models", str(root), str(layers))
    out = {}
    for name, module in CONVERTERS.items():
        out[name] = str(root / name)
        run_module(module, "--src", str(root / HF_DIRS[name]), "--dst", out[name], "--quiet")
    shutil.rmtree(root / "hf")
    return out


if __name__ == "__main__":  # python -m tests.released_models ROOT [LAYERS]: the transformers folders
    import sys

    _root, _layers = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 2
    _vision = save_captioner(_root / HF_DIRS["captioner"], _layers)
    save_itm(_root / HF_DIRS["itm"], _vision, _layers)
