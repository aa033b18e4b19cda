"""The files beside the parameters that let a captioner folder run in transformers, as a folder
converted from transformers has them:

    tokenizer files          with BLIP2's `<image>` placeholder at the config's image_token_index
    preprocessor_config.json BlipImageProcessor at the model's image size (BLIP2's bicubic resize
                             and OpenAI CLIP mean / std, what vlrm_jax.data.preprocess reproduces)
    processor_config.json    Blip2Processor's num_query_tokens
    transformers config      hf_config.json in a model folder, config.json in a transformers folder

`complete_captioner_files` derives whatever a folder lacks (the tiny random captioner, the shapes
world's models, folders written before these files were). transformers' BLIP2 `generate` writes
image_token_index num_query_tokens times before BOS and scatters the projected queries over
exactly those positions, and Blip2Processor finds the placeholder by the text `<image>`; so the id
must be `<image>` in the tokenizer and below the model's vocabulary. The id is, in order:
- the config's image_token_index;
- the tokenizer's `<image>`;
- the next id, when the tokenizer is smaller than the model's vocabulary (`<image>` is added);
- OPT's `<s>` (id 0), which OPT tokenizers never emit (their BOS is `</s>`), renamed `<image>`:
  the shapes world's tokenizers fill their vocabulary.
The project's own decoding places the queries directly and uses the id only in no_repeat_ngram's
bookkeeping of the prompt (the pad id where the config has none). Export writes the derived id
into the model config too, so an exported folder and its transformers form decode alike; a
folder that `convert.to_hf` reads directly keeps its config, and decodes as its transformers form
unless it generates the pad or `<s>` id under no_repeat_ngram_size.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from vlrm_jax.checkpoint import kinds

IMAGE_TOKEN = "<image>"
UNUSED_OPT_TOKEN = "<s>"
PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json")


# ----------------------------------------------------------------------------------------------
# The transformers config.
# ----------------------------------------------------------------------------------------------
def hf_config_for(kind: str, model_cfg: dict) -> dict:
    """A transformers config for folders that never came from transformers (the shapes world)."""
    from transformers import Blip2Config as HFBlip2Config, OPTConfig as HFOPTConfig

    from vlrm_jax.models.blip2 import Blip2Config

    def opt(c: dict) -> dict:
        c = {k: v for k, v in c.items() if k not in ("dtype", "param_dtype", "layer_norm_eps")}
        c["_remove_final_layer_norm"] = c.pop("remove_final_layer_norm")
        return HFOPTConfig(**c).to_dict()

    if kind == kinds.OPT:
        return opt(model_cfg)
    cfg = Blip2Config.from_dict(model_cfg)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("dtype", "param_dtype")}  # noqa: E731
    return HFBlip2Config(
        vision_config=strip(model_cfg["vision"]), qformer_config=model_cfg["qformer"],
        text_config=opt(model_cfg["text"]), num_query_tokens=cfg.num_query_tokens,
        image_token_index=cfg.image_token_index,
    ).to_dict()


# ----------------------------------------------------------------------------------------------
# The image placeholder in the tokenizer.
# ----------------------------------------------------------------------------------------------
def image_token_index(tokenizer, configured: int | None, vocab_size: int) -> int:
    """The placeholder id (see the module docstring for the order)."""
    vocab = tokenizer.get_vocab()
    if configured is not None:
        if IMAGE_TOKEN in vocab and vocab[IMAGE_TOKEN] != configured:
            raise ValueError(f"the tokenizer has {IMAGE_TOKEN} at id {vocab[IMAGE_TOKEN]}, "
                             f"the config's image_token_index is {configured}")
        if configured > len(tokenizer) or configured >= vocab_size:
            raise ValueError(f"image_token_index {configured} is beyond the tokenizer ({len(tokenizer)} tokens) "
                             f"or the model's vocabulary ({vocab_size})")
        return configured
    if IMAGE_TOKEN in vocab:
        return vocab[IMAGE_TOKEN]
    if len(tokenizer) < vocab_size:
        return len(tokenizer)
    unused = vocab.get(UNUSED_OPT_TOKEN)
    if unused is None or unused in {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}:
        raise ValueError(f"no id for BLIP2's {IMAGE_TOKEN} placeholder: the tokenizer fills the model's "
                         f"vocabulary of {vocab_size} and has no unused {UNUSED_OPT_TOKEN}")
    return unused


def with_image_token(folder: str, index: int) -> None:
    """Make the tokenizer saved in `folder` hold `<image>` (special) at `index`: added when
    `index` is the next id, else the token there renamed; untouched when it has it already."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if index < len(tokenizer) and tokenizer.convert_ids_to_tokens(index) == IMAGE_TOKEN:
        return
    if index == len(tokenizer):
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        _save_tokenizer(tokenizer, folder)
    else:
        _save_tokenizer(tokenizer, folder)
        _rename_token(os.path.join(folder, "tokenizer.json"), index, IMAGE_TOKEN)


def _save_tokenizer(tokenizer, folder: str) -> None:
    """Replace the folder's tokenizer files: one left from the source would not have the change."""
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
    tokenizer.save_pretrained(folder)


def _rename_token(path: str, index: int, new: str) -> None:
    """Rename the token with id `index` in a tokenizer.json and make it a special token (the
    tokenizers library has no call for this; the file's layout is its serialisation format)."""
    with open(path) as f:
        state = json.load(f)
    vocab = state["model"].get("vocab")
    if not isinstance(vocab, dict):
        raise ValueError(f"{path}: cannot rename a token of a {state['model'].get('type')} tokenizer")
    old = next(token for token, i in vocab.items() if i == index)
    vocab[new] = vocab.pop(old)
    entry = next((t for t in state["added_tokens"] if t["id"] == index), None)
    if entry is None:
        entry = {"id": index, "single_word": False, "lstrip": False, "rstrip": False}
        state["added_tokens"].append(entry)
    entry.update(content=new, normalized=False, special=True)
    with open(path, "w") as f:
        json.dump(state, f, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------
# Blip2Processor's files.
# ----------------------------------------------------------------------------------------------
def image_processor(image_size: int):
    """transformers' BLIP2 image processor for this image size, as vlrm_jax.data.preprocess
    preprocesses (Salesforce/blip2-opt-*'s settings at 224)."""
    from PIL import Image
    from transformers import BlipImageProcessor

    from vlrm_jax.data.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    return BlipImageProcessor(size={"height": image_size, "width": image_size}, resample=Image.Resampling.BICUBIC,
                              do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                              image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD), do_convert_rgb=True)


def write_processor_files(folder: str, image_size: int, num_query_tokens: int) -> None:
    """preprocessor_config.json and processor_config.json as the Salesforce BLIP2 folders have
    them (`AutoProcessor.from_pretrained` reads both, and the tokenizer beside them); a file the
    folder has already is kept."""
    if not os.path.isfile(os.path.join(folder, PREPROCESSOR_FILE)):
        processor = image_processor(image_size)
        processor.processor_class = "Blip2Processor"
        processor.save_pretrained(folder)
    if not os.path.isfile(os.path.join(folder, PROCESSOR_FILE)):
        with open(os.path.join(folder, PROCESSOR_FILE), "w") as f:
            json.dump({"num_query_tokens": num_query_tokens, "processor_class": "Blip2Processor"}, f, indent=2)


# ----------------------------------------------------------------------------------------------
# All of it.
# ----------------------------------------------------------------------------------------------
def has_tokenizer(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, n)) for n in ("tokenizer.json", "tokenizer_config.json"))


def complete_captioner_files(folder: str, model_cfg: dict, hf_config: dict | None) -> tuple[dict, dict]:
    """Add to `folder` (a staging folder holding the tokenizer files) what a captioner needs in
    transformers; returns (model config, transformers config), both with the image_token_index
    the tokenizer now holds."""
    from transformers import AutoTokenizer

    if not has_tokenizer(folder):
        raise ValueError("the captioner folder has no tokenizer (tokenizer.json / tokenizer_config.json)")
    index = image_token_index(AutoTokenizer.from_pretrained(folder), model_cfg["image_token_index"],
                              model_cfg["text"]["vocab_size"])
    with_image_token(folder, index)
    write_processor_files(folder, model_cfg["vision"]["image_size"], model_cfg["num_query_tokens"])
    model_cfg = dict(model_cfg, image_token_index=index)
    hf_config = dict(hf_config or hf_config_for(kinds.BLIP2_OPT, model_cfg), image_token_index=index)
    return model_cfg, hf_config


def side_files(folder: str, skip: set[str]) -> list[str]:
    """The plain files of a folder, but `skip`."""
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, n)) and n not in skip]


def copy_files(paths: list[str], folder: str) -> None:
    for path in paths:
        shutil.copy2(path, os.path.join(folder, os.path.basename(path)))


def staging_folder() -> tempfile.TemporaryDirectory:
    """Where side files are prepared before a model folder is written."""
    return tempfile.TemporaryDirectory(prefix="vlrm-side-files-")
