"""Input pipeline throughput: images/s decoded + preprocessed, for the folder and tar sources.

Writes a temporary corpus of N JPEGs (640x480, quality 90, photo-like gradients + noise), also
packed as webdataset tar shards, then streams one epoch of padded batches through each source
with each preprocessor and each worker count. "per core" divides by the cores the workers can
use, min(workers, CPU cores).

    python bench/input_pipeline.py --n 500 --workers 1 2 --batch 32
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlrm_jax.data import (  # noqa: E402
    Blip2Preprocessor,
    FolderSource,
    OpenClipPreprocessor,
    TarSource,
)


def write_corpus(root: str, n: int, width: int, height: int, shard_size: int) -> list[str]:
    """n JPEGs under root/images, and the same as tar shards under root/shards."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "shards"))
    shards, tar = [], None
    for k in range(n):
        phase = rng.uniform(0, 6.28, 3)
        base = np.stack([127 + 120 * np.sin(x / (20 + 5 * c) + y / 37 + phase[c]) for c in range(3)], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        with open(os.path.join(root, "images", f"{k:06d}.jpg"), "wb") as f:
            f.write(data)
        if k % shard_size == 0:
            if tar is not None:
                tar.close()
            shards.append(os.path.join(root, "shards", f"{k // shard_size:05d}.tar"))
            tar = tarfile.open(shards[-1], "w")
        info = tarfile.TarInfo(f"{k:06d}.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tar.close()
    return shards


def run(source, transform, batch: int) -> tuple[int, float]:
    start, count = time.perf_counter(), 0
    for b in source.batches(batch, transform=transform, drop_remainder=False):
        count += int(b.valid.sum())
    return count, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="images in the corpus")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="thread counts to time")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--shard-size", type=int, default=100)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    transforms = {"blip2-224": Blip2Preprocessor(224), "open_clip-224": OpenClipPreprocessor(224)}
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        shards = write_corpus(root, args.n, args.width, args.height, args.shard_size)
        print(f"corpus: {args.n} JPEGs {args.width}x{args.height} in {time.perf_counter() - t0:.1f} s; "
              f"{cores} CPU cores")
        print(f"{'source':8} {'preprocess':14} {'workers':>7} {'images':>7} {'seconds':>8} "
              f"{'images/s':>9} {'per core':>9}")
        for workers in args.workers:
            sources = {
                "folder": lambda: FolderSource(os.path.join(root, "images"), workers=workers,
                                               process_index=0, process_count=1),
                "tar": lambda: TarSource(shards, workers=workers, process_index=0, process_count=1),
            }
            for sname, make in sources.items():
                for tname, transform in transforms.items():
                    count, secs = run(make(), transform, args.batch)
                    ips = count / secs
                    print(f"{sname:8} {tname:14} {workers:>7} {count:>7} {secs:>8.2f} {ips:>9.1f} "
                          f"{ips / min(max(workers, 1), cores):>9.1f}")


if __name__ == "__main__":
    main()
