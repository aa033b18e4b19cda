"""Read PyTorch checkpoints tensor by tensor without loading them whole.

safetensors files are read one tensor at a time (the header is parsed here, each tensor is read
from its offset), so converting a 3.8B-parameter checkpoint holds the converted output plus one
source tensor in memory. `pytorch_model.bin` / open_clip `.pt` files are opened with `torch.load(mmap=True)`.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable

import ml_dtypes
import numpy as np

SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


class TensorSource:
    """A name -> lazily loaded numpy array mapping."""

    def __init__(self, loaders: dict[str, Callable[[], np.ndarray]], shapes: dict[str, tuple], origin: str):
        self._loaders = loaders
        self._shapes = shapes
        self.origin = origin

    def keys(self) -> list[str]:
        return list(self._loaders)

    def __contains__(self, key: str) -> bool:
        return key in self._loaders

    def shape(self, key: str) -> tuple:
        return self._shapes[key]

    def load(self, key: str) -> np.ndarray:
        return self._loaders[key]()

    def with_extra(self, key: str, shape: tuple, loader: Callable[[], np.ndarray]) -> "TensorSource":
        """A copy with one more (derived) tensor; used to adapt legacy key layouts."""
        loaders, shapes = dict(self._loaders), dict(self._shapes)
        loaders[key], shapes[key] = loader, tuple(shape)
        return TensorSource(loaders, shapes, self.origin)

    def without(self, keys: Iterable[str]) -> "TensorSource":
        drop = set(keys)
        return TensorSource(
            {k: v for k, v in self._loaders.items() if k not in drop},
            {k: v for k, v in self._shapes.items() if k not in drop},
            self.origin,
        )


def _safetensors_file(path: str) -> tuple[dict, dict]:
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    loaders, shapes = {}, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(SAFETENSORS_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        start, end = info["data_offsets"]

        def load(path=path, dtype=dtype, shape=shape, offset=base + start, size=end - start):
            # A plain read of just this tensor: unlike a memmap, no file pages stay mapped into
            # the process after the tensor is converted, so peak memory is one tensor at a time.
            if size == 0:
                return np.zeros(shape, dtype)
            return np.fromfile(path, dtype=dtype, count=size // dtype.itemsize, offset=offset).reshape(shape)

        loaders[name], shapes[name] = load, shape
    return loaders, shapes


def _torch_file(path: str) -> tuple[dict, dict]:
    import torch  # only needed for .bin/.pt sources

    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    loaders, shapes = {}, {}
    for name, tensor in state.items():
        if not hasattr(tensor, "shape"):
            continue

        def load(t=tensor):
            t = t.detach()
            if t.dtype == torch.bfloat16:
                return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            return t.numpy()

        loaders[name], shapes[name] = load, tuple(tensor.shape)
    return loaders, shapes


def open_file(path: str) -> TensorSource:
    if path.endswith(".safetensors"):
        loaders, shapes = _safetensors_file(path)
    else:
        loaders, shapes = _torch_file(path)
    return TensorSource(loaders, shapes, path)


def open_hf_dir(model_dir: str) -> TensorSource:
    """Every weight file of a `save_pretrained` folder (single or sharded, safetensors or bin)."""
    files = sorted(os.listdir(model_dir))
    picked = [f for f in files if f.endswith(".safetensors")] or [
        f for f in files if f.startswith("pytorch_model") and f.endswith(".bin")
    ]
    if not picked:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors or pytorch_model*.bin weight files")
    loaders, shapes = {}, {}
    for name in picked:
        src = open_file(os.path.join(model_dir, name))
        for key in src.keys():
            if key in loaders:
                raise ValueError(f"{model_dir}: tensor {key!r} appears in more than one weight file")
            loaders[key] = src._loaders[key]
            shapes[key] = src.shape(key)
    return TensorSource(loaders, shapes, model_dir)


def resolve_hf(src: str) -> str:
    """A local folder as is; otherwise a hub id, downloaded (config, weights, tokenizer files)."""
    if os.path.isdir(src):
        return src
    if os.path.exists(src):
        raise NotADirectoryError(f"--src {src!r} is a file; expected a folder or a hub id")
    from huggingface_hub import snapshot_download

    return snapshot_download(
        src, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
    )
