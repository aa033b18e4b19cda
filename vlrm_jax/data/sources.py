"""Image sources: a sharded, shuffled, resumable stream of decoded (and preprocessed) images.

Every source is a list of N items in a fixed order (sorted paths; tar shards in sorted order,
members in tar order; TFDS order), read by position, and shares one stream machinery:

- Host split: item i belongs to host `i % process_count`. The split is fixed across epochs, so
  the hosts together see every item exactly once per epoch and never the same one twice.
- Shuffle: each epoch, a host permutes its own items with `np.random.default_rng([seed, epoch])`;
  the same seed gives the same order, a new epoch a new one. `shuffle=False` keeps list order.
- Resume: every yielded `Record` / `Batch` carries `state = {"epoch": e, "index": i}`, the
  position just after it in this host's stream (`index` counts items, bad ones included).
  Passing that dict back as `state=` yields exactly the remaining stream. It holds only for the
  same corpus, seed and host layout.
- Decoding (and the transform, e.g. a preprocessor) runs in a thread pool (`workers`); PIL and
  NumPy release the GIL for the heavy parts. Results come back in stream order.
- Bad items are skipped, never raised: each is counted in `skips` (a `SkipCounter`) with its key
  and reason, and a summary of the counts so far is logged at the end of every epoch.

Batching (`batches`) gives fixed shapes (B, H, W, 3), one epoch at a time:
- `drop_remainder=True` (training): each batch holds B good images; a bad item is replaced by the
  next one; the epoch's last incomplete batch is dropped. Hosts may then make different numbers
  of batches per epoch, so multi-host training should run with `num_epochs=None` (an endless
  stream; the trainer decides the number of steps).
- `drop_remainder=False` (evaluation): batch k holds the items at positions [kB, (k+1)B) of the
  host's stream; bad items and the end of the epoch become padding (zero images, key "",
  `valid=False`). Every host makes the same number of batches, ceil(ceil(N / hosts) / B), so all
  hosts step together even when their item counts or skip counts differ. Here `state` counts
  positions up to that padded length, so a host also resumes into the padding it still owes.
"""
from __future__ import annotations

import abc
import collections
import dataclasses
import functools
import glob
import logging
import os
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vlrm_jax.data.decode import DecodeOptions, SkipCounter, decode_image
from vlrm_jax.data.image_files import IMAGE_EXTENSIONS, find_images, list_folder

logger = logging.getLogger(__name__)

TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")

Transform = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class Record:
    """One good image: `image` is RGB uint8 (H, W, 3), or the transform's output."""

    key: str
    image: np.ndarray
    extras: dict[str, Any]
    state: dict[str, int]


def epoch_position(state: dict[str, int], epoch_len: int) -> int:
    """How many items of the first epoch a pass has read (bad ones included) when it reaches
    `state`, the state of a `Record` / `Batch`: a progress count for one-epoch passes."""
    return epoch_len if state["epoch"] > 0 else min(state["index"], epoch_len)


@dataclasses.dataclass
class Batch:
    """B images of one shape; `valid[b]` is False for padding; `extras[name][b]` None there."""

    keys: list[str]
    images: np.ndarray
    valid: np.ndarray
    extras: dict[str, list]
    state: dict[str, int]


def _host_args(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when a caller does not say which host it is
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
    return process_index, process_count


def _ordered_map(fn: Callable, items: Iterator, workers: int, window: int) -> Iterator:
    """fn over items on a thread pool, results in input order, at most `window` in flight."""
    if workers <= 0:
        for item in items:
            yield item, fn(item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vlrm-decode")
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                item0, fut = pending.popleft()
                yield item0, fut.result()
        while pending:
            item0, fut = pending.popleft()
            yield item0, fut.result()
    finally:  # the consumer may stop early: drop queued work, wait for the running few
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class ImageSource(abc.ABC):
    """The shared stream machinery; subclasses list items and read one item's bytes."""

    def __init__(self, *, seed: int = 0, shuffle: bool = True, process_index: int | None = None,
                 process_count: int | None = None, decode: DecodeOptions = DecodeOptions(),
                 workers: int = 8, prefetch: int = 4, skips: SkipCounter | None = None,
                 name: str | None = None):
        self.seed = seed
        self.shuffle = shuffle
        self.process_index, self.process_count = _host_args(process_index, process_count)
        self.decode = decode
        self.workers = workers
        self.prefetch = prefetch
        self.name = name or type(self).__name__
        self.skips = skips or SkipCounter(self.name, log=logger)

    # --- what a source provides -------------------------------------------------------------
    @abc.abstractmethod
    def __len__(self) -> int:
        """N, the number of items over all hosts."""

    @abc.abstractmethod
    def key(self, i: int) -> str:
        """The name of item i (a relative path, a webdataset key, a TFDS id)."""

    @abc.abstractmethod
    def read(self, i: int) -> bytes:
        """The encoded bytes of item i; raises OSError when they cannot be read."""

    def extras(self, i: int) -> dict[str, Any]:
        """Per-item data other than the image (e.g. reference captions)."""
        return {}

    def _host_items(self) -> np.ndarray:
        """Indices of this host's items, in list order."""
        return np.arange(self.process_index, len(self), self.process_count)

    # --- the stream -------------------------------------------------------------------------
    @property
    def host_len(self) -> int:
        """Items per epoch on this host."""
        return len(self._host_items())

    @property
    def padded_host_len(self) -> int:
        """Items per epoch on the host with the most: the padded epoch length of `batches`."""
        return -(-len(self) // self.process_count)

    def order(self, epoch: int) -> np.ndarray:
        """This host's item indices for `epoch`, in stream order."""
        items = self._host_items()
        if not self.shuffle:
            return items
        return items[np.random.default_rng([self.seed, epoch]).permutation(len(items))]

    def _state(self, epoch: int, index: int, epoch_len: int) -> dict[str, int]:
        if index >= epoch_len:
            return {"epoch": epoch + 1, "index": 0}
        return {"epoch": epoch, "index": index}

    @staticmethod
    def _parse_state(state: dict | None) -> tuple[int, int]:
        if state is None:
            return 0, 0
        try:
            epoch, index = int(state["epoch"]), int(state["index"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"bad stream state {state!r}: want {{'epoch': int, 'index': int}}") from e
        if epoch < 0 or index < 0:
            raise ValueError(f"bad stream state {state!r}: negative position")
        return epoch, index

    def _load(self, i: int, transform: Transform | None):
        """Reads, decodes, transforms item i. Returns (image, None) or (None, (reason, detail))."""
        try:
            data = self.read(i)
        except OSError as e:
            return None, ("unreadable", f"{type(e).__name__}: {e}")
        decoded = decode_image(data, self.decode)
        if not decoded.ok:
            return None, (decoded.reason, decoded.detail)
        if transform is None:
            return decoded.image, None
        try:
            return transform(decoded.image), None
        except Exception as e:  # noqa: BLE001 - one odd image must not stop the run
            return None, ("transform_failed", f"{type(e).__name__}: {e}")

    def _epochs(self, state: dict | None, num_epochs: int | None, transform: Transform | None):
        """Yields (epoch, start, items) per epoch from `state` on; items yields (pos, i, image|None)."""
        epoch, start = self._parse_state(state)
        while num_epochs is None or epoch < num_epochs:
            yield epoch, start, self._epoch_items(epoch, start, transform)
            epoch, start = epoch + 1, 0

    def _epoch_items(self, epoch: int, start: int, transform: Transform | None):
        order = self.order(epoch)
        load = lambda pos: self._load(int(order[pos]), transform)  # noqa: E731
        window = max(1, self.workers * self.prefetch)
        for pos, (image, failure) in _ordered_map(load, iter(range(start, len(order))),
                                                  self.workers, window):
            i = int(order[pos])
            if failure is None:
                self.skips.ok()
            else:
                self.skips.skip(failure[0], self.key(i), failure[1])
            yield pos, i, image
        self.skips.log_summary()

    def records(self, *, transform: Transform | None = None, num_epochs: int | None = 1,
                state: dict | None = None) -> Iterator[Record]:
        """Good images one by one (bad ones skipped), from `state` on; `num_epochs=None`: endless."""
        host_len = self.host_len
        for epoch, _, items in self._epochs(state, num_epochs, transform):
            for pos, i, image in items:
                if image is not None:
                    yield Record(self.key(i), image, self.extras(i),
                                 self._state(epoch, pos + 1, host_len))

    def batches(self, batch_size: int, *, transform: Transform, drop_remainder: bool = True,
                num_epochs: int | None = 1, state: dict | None = None) -> Iterator[Batch]:
        """Fixed-shape batches of `transform`ed images; see the module docstring for the two modes.

        `transform` must map every image to one shape; an `output_shape` attribute on it (as the
        preprocessors have) lets a batch with no good image still be padded.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if transform is None:
            raise ValueError("batches need a transform that gives every image one shape")
        make = functools.partial(self._make_batch, batch_size=batch_size,
                                 shape=getattr(transform, "output_shape", None))
        host_len, end = self.host_len, self.padded_host_len
        for epoch, start, items in self._epochs(state, num_epochs, transform):
            if drop_remainder:
                good = []
                for pos, i, image in items:
                    if image is not None:
                        good.append((i, image))
                        if len(good) == batch_size:
                            yield make(good, epoch, pos + 1, host_len)
                            good = []
                if good:
                    logger.debug("%s: dropped the last %d images of epoch %d", self.name,
                                 len(good), epoch)
            else:
                # Batches cover fixed position ranges up to the longest host's epoch length, so
                # every host makes as many batches, and resumes to the same place, as the others.
                lo, slots = start, []
                for pos, i, image in items:
                    slots.append((i, image))
                    if pos + 1 - lo == batch_size:
                        yield make(slots, epoch, pos + 1, end)
                        lo, slots = pos + 1, []
                while lo < end:
                    hi = min(lo + batch_size, end)
                    yield make(slots, epoch, hi, end)
                    lo, slots = hi, []

    def _make_batch(self, items, epoch, state_pos, epoch_len, *, batch_size, shape) -> Batch:
        """items: [(i, image | None)] filling the first slots; the rest is padding."""
        good = [(b, i, im) for b, (i, im) in enumerate(items) if im is not None]
        if good:
            shape0, dtype = good[0][2].shape, good[0][2].dtype
            for _, i, im in good:
                if im.shape != shape0:
                    raise ValueError(f"{self.name}: transform gave {self.key(i)!r} shape {im.shape}, "
                                     f"others {shape0}; batches need one shape")
        elif shape is None:
            raise ValueError(f"{self.name}: a batch with no good image needs transform.output_shape")
        else:
            shape0, dtype = tuple(shape), np.float32
        images = np.zeros((batch_size,) + tuple(shape0), dtype)
        valid = np.zeros(batch_size, bool)
        keys = [""] * batch_size
        extras: dict[str, list] = {}
        for b, i, im in good:
            images[b], valid[b], keys[b] = im, True, self.key(i)
            for name, value in self.extras(i).items():
                extras.setdefault(name, [None] * batch_size)[b] = value
        return Batch(keys, images, valid, extras, self._state(epoch, state_pos, epoch_len))


class FolderSource(ImageSource):
    """Every file under `root` (recursive) whose extension is in `extensions`, sorted by path;
    or, with `keys`, exactly those files of `root`.

    Keys are paths relative to `root`, with "/" separators (the rule of `image_files.py`, which
    the caption and evaluate commands share). `FolderSource.from_spec` takes a folder or a glob.
    """

    def __init__(self, root: str | os.PathLike, *, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 follow_links: bool = False, keys: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"image folder {self.root!r} does not exist or is no folder")
        if keys is None:
            keys = list_folder(self.root, extensions, follow_links)
            if not keys:
                raise ValueError(f"no files with extensions {tuple(extensions)} under {self.root!r}")
        self._keys = sorted(keys)

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> FolderSource:
        """The images of a folder (by extension) or of a glob pattern (every file it matches),
        keyed relative to the folder or to the glob's fixed leading folders."""
        root, keys = find_images(spec)
        return cls(root, keys=keys, **kwargs)

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> str:
        return self._keys[i]

    def read(self, i: int) -> bytes:
        with open(os.path.join(self.root, self._keys[i]), "rb") as f:
            return f.read()


def _list_shards(shards: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(shards, (str, os.PathLike)):
        s = os.fspath(shards)
        if os.path.isdir(s):
            found = sorted(glob.glob(os.path.join(glob.escape(s), "**", "*.tar"), recursive=True))
        elif glob.has_magic(s):
            found = sorted(glob.glob(s, recursive=True))
        else:
            found = [s]
        if not found:
            raise FileNotFoundError(f"no tar shards at {s!r}")
        shards = found
    paths = [os.fspath(p) for p in shards]
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"tar shard {p!r} does not exist")
    return paths


def _split_member_name(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the file name."""
    d, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(d, stem) if d else stem), ext.lower() if dot else ""


class TarSource(ImageSource):
    """webdataset-style tar shards: members grouped into samples by key (the path up to the first
    dot of the file name); each sample's image is its member with the first extension in
    `extensions` that it has. Samples without an image are counted as skipped (`no_image`).

    Shards: a folder (every *.tar below it), a glob pattern, a path, or a list of paths; taken in
    sorted order, samples in tar order. The shards are indexed once (headers only) and read by
    offset, so shuffling is per sample over all shards. Only uncompressed tars can be read this
    way. Keys are the webdataset keys; `extras["shard"]` names the shard.
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike], *,
                 extensions: Sequence[str] = TAR_IMAGE_EXTENSIONS, **kwargs):
        super().__init__(**kwargs)
        self.shards = _list_shards(shards)
        self.extensions = tuple(e.lower().lstrip(".") for e in extensions)
        with ThreadPoolExecutor(max(1, min(self.workers, len(self.shards)))) as pool:
            indexed = list(pool.map(self._index_shard, self.shards))
        keys, shard_ids, offsets, sizes = [], [], [], []
        for s, samples in enumerate(indexed):
            for key, offset, size in samples:
                keys.append(key)
                shard_ids.append(s)
                offsets.append(offset)
                sizes.append(size)
        if not keys:
            raise ValueError(f"no samples with an image ({self.extensions}) in {len(self.shards)} shards")
        self._keys = keys
        self._shard_ids = np.asarray(shard_ids, np.int32)
        self._offsets = np.asarray(offsets, np.int64)
        self._sizes = np.asarray(sizes, np.int64)
        self._fds: dict[int, int] = {}
        self._fd_lock = threading.Lock()

    def _index_shard(self, path: str) -> list[tuple[str, int, int]]:
        """[(key, data offset, size)] of the image member of each sample in one shard."""
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                for m in tar:
                    if m.isfile():
                        key, ext = _split_member_name(m.name)
                        groups.setdefault(key, {})[ext] = m
        except tarfile.CompressionError as e:
            raise ValueError(f"tar shard {path!r} is compressed; only plain .tar shards can be "
                             "read by offset") from e
        except (tarfile.ReadError, EOFError, OSError) as e:
            msg = str(e)
            if "compress" in msg or not groups:
                raise ValueError(f"tar shard {path!r} cannot be read as a plain tar: {e}") from e
            # A damaged shard: keep the samples before the damage, and say so.
            self.skips.skip("bad_shard", path, f"{type(e).__name__}: {e}; kept {len(groups)} samples")
        out = []
        for key, members in groups.items():
            ext = next((e for e in self.extensions if e in members), None)
            if ext is None:
                self.skips.skip("no_image", key, f"members {sorted(members)} in {path}")
                continue
            m = members[ext]
            out.append((key, m.offset_data, m.size))
        return out

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, i: int) -> str:
        return self._keys[i]

    def extras(self, i: int) -> dict[str, Any]:
        return {"shard": self.shards[self._shard_ids[i]]}

    def _fd(self, shard: int) -> int:
        with self._fd_lock:
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
            return fd

    def read(self, i: int) -> bytes:
        size = int(self._sizes[i])
        data = os.pread(self._fd(int(self._shard_ids[i])), size, int(self._offsets[i]))
        if len(data) != size:  # pread is thread-safe: no shared file position
            raise OSError(f"shard {self.shards[self._shard_ids[i]]!r} ends inside member "
                          f"{self._keys[i]!r} ({len(data)} of {size} bytes)")
        return data

    def close(self) -> None:
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
