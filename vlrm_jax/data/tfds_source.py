"""A TFDS image dataset (e.g. `coco_captions`, split "test") as an `ImageSource`.

tensorflow is imported inside `TfdsSource.__init__` only: importing it before torchvision in
one process crashes, and nothing else in the package needs it.

The image feature is read undecoded (`tfds.decode.SkipDecoding`) and decoded by PIL like every
other source, so the pixels equal what the transformers / open_clip processors see from the
same JPEG (TF's JPEG decoder may round differently), and a bad image is skipped, not fatal.

Reading: the split is read once, in TFDS order (`shuffle_files=False`); this host keeps item i
when `i % process_count == process_index`, holding the encoded bytes and the texts in memory
(about 0.8 GB in all for the 5000 COCO Karpathy-test images, divided among the hosts). That
suits evaluation sets; stream large training sets from folders or tar shards instead.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vlrm_jax.data.sources import ImageSource


def _get(example: dict, path: str):
    """example["a"]["b"] for path "a/b"; a flat key containing "/" (e.g. "image/id") wins."""
    if path in example:
        return example[path]
    node = example
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def not_prepared_message(name: str, builder) -> str:
    """What to run to prepare `name` where `builder` looked for it (it downloads the data)."""
    root = str(builder.data_dir_root)
    return (f"TFDS dataset {name!r} is not prepared under data dir {root!r} (nothing at {builder.data_dir}); "
            "reading it downloads nothing. Prepare it there once (this downloads the data) with\n"
            f"  python -c \"import tensorflow_datasets as tfds; tfds.builder({name!r}, data_dir={root!r})"
            f".download_and_prepare()\"\n"
            f"or: tfds build {name} --data_dir {root}   (the tfds command needs apache_beam)")


def _class_names(features, path: str) -> list[str] | None:
    """The names of a class-label feature at `path` ("objects/label"), None where there is none."""
    node = features
    for part in path.split("/"):
        try:
            node = node[part]
        except (KeyError, TypeError):
            return None
    names = list(getattr(node, "names", None) or [])
    if names == [str(k) for k in range(len(names))] and len(names) == len(coco_classes()):
        return coco_classes()  # coco_captions declares 80 classes; preparing it stores their names
    return names or None


def coco_classes() -> list[str]:
    """The 80 COCO object classes in label order (vlrm_jax/assets/coco_classes.txt)."""
    from vlrm_jax.rewards.penalties import read_word_list  # the one reader of the shipped lists

    return read_word_list(None, "coco_classes.txt")


class TfdsSource(ImageSource):
    """Images of one TFDS split, with their texts.

    name, split, data_dir: as for `tfds.builder(name, data_dir=...).as_dataset(split=...)`; the
      dataset must already be prepared in data_dir (nothing is downloaded): FileNotFoundError
      saying how to prepare it otherwise, ValueError for a name TFDS does not know.
    image_key: the image feature.
    key_field: the feature that names an example (str of it is the key); None: its position.
    text_field: a feature holding one text or a list of texts (nested with "/", e.g.
      "captions/text" for coco_captions); returned as `extras["captions"]`, a list of str, for
      the REF row of the recall table. None: no texts.
    object_field: a class-label feature of the objects annotated in the image ("objects/label"
      for coco_captions: COCO's 80 classes), returned as `extras["objects"]`, a list of class
      names (CHAIR in the evaluation). Skipped when the dataset has no such feature.
    Other arguments: as for `ImageSource`.
    """

    def __init__(self, name: str, split: str = "test", *, data_dir: str | None = None,
                 image_key: str = "image", key_field: str | None = "image/id",
                 text_field: str | None = "captions/text", object_field: str | None = "objects/label", **kwargs):
        super().__init__(name=f"tfds:{name}/{split}", **kwargs)
        import tensorflow as tf  # see the module docstring
        import tensorflow_datasets as tfds
        try:  # keep TF off any accelerator: JAX owns it
            tf.config.set_visible_devices([], "GPU")
        except (RuntimeError, ValueError):
            pass

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:  # its message lists every dataset
            raise ValueError(f"TFDS has no dataset {name!r} (tfds.list_builders() names them)") from e
        features = builder.info.features
        if image_key not in features:
            raise KeyError(f"TFDS {name!r} has no image feature {image_key!r}; "
                           f"features: {sorted(features.keys())}")
        try:
            ds = builder.as_dataset(split=split, shuffle_files=False,
                                    decoders={image_key: tfds.decode.SkipDecoding()})
        except AssertionError as e:  # TFDS's way of saying that data_dir holds no prepared copy
            raise FileNotFoundError(not_prepared_message(name, builder)) from e
        self._keys: list[str] = []
        self._bytes: list[bytes] = []
        self._texts: list[list[str]] = []
        self._objects: list[list[str]] = []
        names = _class_names(features, object_field) if object_field else None
        n = 0
        for position, ex in enumerate(tfds.as_numpy(ds)):
            n += 1
            if position % self.process_count != self.process_index:
                continue
            self._keys.append(str(position) if key_field is None else _text(_get(ex, key_field)))
            self._bytes.append(bytes(ex[image_key]))
            if text_field is not None:
                texts = _get(ex, text_field)
                texts = [texts] if np.ndim(texts) == 0 else list(texts)
                self._texts.append([_text(t) for t in texts])
            if names is not None:
                self._objects.append([names[int(k)] for k in np.ravel(_get(ex, object_field))])
        if n == 0:
            raise ValueError(f"TFDS {name!r} split {split!r} is empty")
        self._n = n
        self._with_texts = text_field is not None
        self._with_objects = names is not None

    # Items are held per host: positions below index this host's list.
    def __len__(self) -> int:
        return self._n

    def _host_items(self) -> np.ndarray:
        return np.arange(len(self._keys))

    def key(self, i: int) -> str:
        return self._keys[i]

    def read(self, i: int) -> bytes:
        return self._bytes[i]

    def extras(self, i: int) -> dict[str, Any]:
        out = {"captions": self._texts[i]} if self._with_texts else {}
        if self._with_objects:
            out["objects"] = self._objects[i]
        return out
