"""A mocked TFDS coco_captions (tfds.testing.mock_data; nothing is downloaded), shared as the
`mock_coco` fixture through tests/conftest.py.

TFDS's random mock cannot make a valid coco_captions example (its 'objects' sequence gets
unequal lengths and inverted boxes), so the mock's example generator is replaced by one that
encodes valid examples with the dataset's own features; the rest (SkipDecoding, decoding,
as_dataset) is TFDS's own code. tensorflow is imported inside the fixture only.
"""
import numpy as np
import pytest

from tests.data.images import pattern

N = 11


def _coco_example(k: int) -> dict:
    return {
        "image": pattern(40 + 3 * k, 48, seed=k, noise=0),
        "image/filename": f"COCO_val2014_{k:012d}.jpg",
        "image/id": 1000 + k,
        "captions": {"id": np.arange(5) + 10 * k,
                     "text": np.array([f"caption {j} of image {1000 + k}" for j in range(5)])},
        "objects": _objects(k),
    }


def _objects(k: int) -> dict:
    """One or two annotated objects: labels k % 80 and, for odd k, (k + 17) % 80."""
    labels = [k % 80] + ([(k + 17) % 80] if k % 2 else [])
    n = len(labels)
    return {"area": np.full(n, 4), "bbox": np.tile(np.array([[0.1, 0.2, 0.5, 0.6]], np.float32), (n, 1)),
            "id": np.arange(n) + 10 * k, "is_crowd": np.zeros(n, bool), "label": np.array(labels)}


def _as_arrays(encoded):
    """TFDS encodes a Sequence as a list of 0-d arrays, which tf.data rejects for strings."""
    if isinstance(encoded, dict):
        return {k: _as_arrays(v) for k, v in encoded.items()}
    if isinstance(encoded, list):
        items = [x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in encoded]
        return np.stack([x.encode() if isinstance(x, str) else x for x in items])
    return encoded


@pytest.fixture
def mock_coco(monkeypatch):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.testing import mocking

    def examples(self):
        for k in range(self._num_examples):
            yield _as_arrays(self._features.encode_example(_coco_example(k)))

    monkeypatch.setattr(mocking.EncodedRandomFakeGenerator, "__iter__", examples)
    with tfds.testing.mock_data(num_examples=N):
        yield
