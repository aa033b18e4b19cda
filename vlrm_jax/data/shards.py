"""Pack an image collection into the webdataset tar shards that training reads.

    python -m vlrm_jax.data.shards --images DIR_OR_GLOB --out shards/ \\
        [--per-shard 1000] [--min-size 32] [--captions FILE.jsonl] [--overwrite] [--quiet]

then train with `--config.data.source='shards/*.tar'` (the command prints the exact flag).

- Input: a folder (searched recursively for image extensions) or a glob pattern (every file it
  matches), taken in sorted order of the path relative to the folder (for a glob: to its fixed
  leading folders): `image_files.find_images`, the rule of the caption and evaluate commands.
- Every file is checked with the decoder the training source uses (`decode_image`, shorter side
  at least `--min-size`, default 32 as `data.min_side`). Bad files are skipped and counted by
  reason (`empty`, `unreadable`, `not_image`, `too_small`, `truncated`, ...; `unsupported_extension`
  for formats such as .bmp or .gif that `TarSource` does not read: convert those first); a summary
  is printed at the end.
- Output: plain (uncompressed) tars `shard-00000.tar`, ... of `--per-shard` samples each, every
  sample the file's original bytes (never re-encoded) as `KEY.EXT` (EXT lower case), and
  `KEY.txt` with its caption when `--captions` gives one. Rows of that .jsonl are
  `{"file", "caption"}` (what `python -m vlrm_jax.caption` writes, `vlrm_jax/eval/caption_file.py`):
  "file" is the path relative to --images, or a path from the working directory to one of its
  files; the first row of a file wins.
- Keys are the relative path without its extension. webdataset ends a key at the first dot of
  the file name, so dots (and percent signs) in file names are written %2E (%25): `a/cat.v2.jpg`
  becomes `a/cat%2Ev2.jpg`. A file that shares its name with an earlier one of another extension
  keeps its extension in the key (`x.jpg` -> `x`, `x.png` -> `x%2Epng`), so keys are unique.
- Same input, same bytes: members carry a fixed mtime (0), owner (0/0, no names) and mode (0644).
- Each shard is written under a temporary name and renamed when complete. A non-empty --out is
  refused unless --overwrite; then the shard-*.tar files this run did not write (and temporary
  ones a killed run left) are removed, and any other file is left alone.
- Bad input (no images, an unwritable --out, a malformed captions file, no usable image) prints
  `error: ...` and exits with status 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import io
import os
import shlex
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

from vlrm_jax.data import image_files
from vlrm_jax.data.decode import DecodeOptions, SkipCounter, decode_image
from vlrm_jax.data.sources import TAR_IMAGE_EXTENSIONS
from vlrm_jax.eval import caption_file
from vlrm_jax.eval.console import configure_logging, progress_bar

SHARD_PATTERN = "shard-{:05d}.tar"
SHARD_GLOBS = ("shard-*.tar", ".shard-*.tar.partial")  # finished shards; those a killed run left
CHECK_CHUNK = 256  # images checked per pool round: bounds the encoded bytes held in memory


@dataclasses.dataclass(frozen=True)
class ImageFile:
    path: str  # as found on disk
    relative: str  # to the folder or the glob's fixed leading folders, "/"-separated


@dataclasses.dataclass(frozen=True)
class Checked:
    """An image that passed the decoder (`data` set), or why it did not (`reason`, `detail`)."""

    data: bytes | None
    reason: str | None = None
    detail: str = ""


@dataclasses.dataclass
class Written:
    """What `write_shards` did: the finished shards, the skips, how many samples got a caption."""

    shards: list[str]
    skips: SkipCounter
    captioned: int = 0


class UsageError(Exception):
    """Bad input: reported as `error: ...` with exit status 2."""


# --- finding the images ---------------------------------------------------------------------------

def find_images(spec: str) -> tuple[str, list[ImageFile]]:
    """(root, images) of a folder or glob, sorted by path relative to root (`image_files`' rule)."""
    try:
        root, relatives = image_files.find_images(spec)
    except FileNotFoundError as e:
        raise UsageError(f"--images {e}") from e
    return root, [ImageFile(os.path.join(root, rel), rel) for rel in relatives]


# --- keys -----------------------------------------------------------------------------------------

def escape_name(name: str) -> str:
    """A file name with no dot: webdataset ends the key at the first dot of the file name."""
    return name.replace("%", "%25").replace(".", "%2E")


def extension(relative: str) -> str:
    return os.path.splitext(relative)[1].lstrip(".").lower()


def sample_keys(relatives: Sequence[str]) -> list[str]:
    """One unique key per relative path (taken in the given, sorted order); see the module docstring."""
    keys, taken = [], set()
    for rel in relatives:
        folder, name = rel.rpartition("/")[::2]
        prefix = folder + "/" if folder else ""
        key = prefix + escape_name(os.path.splitext(name)[0])
        if key in taken:
            # Taken by an earlier file of this name with another extension. The full name is
            # free: only a longer file name, which sorts later, could have made it.
            key = prefix + escape_name(name)
        if key in taken:
            raise AssertionError(f"duplicate sample key {key!r} for {rel!r}")
        taken.add(key)
        keys.append(key)
    return keys


# --- captions -------------------------------------------------------------------------------------

def image_captions(path: str, root: str, images: Sequence[ImageFile]) -> list[str | None]:
    """Each image's caption from a caption file (`eval.caption_file`: keyed like the images)."""
    try:
        captions = caption_file.match_captions(caption_file.read_captions(path),
                                               [im.relative for im in images], folder=root,
                                               captions_name=path, images_name="--images")
    except (OSError, ValueError) as e:
        raise UsageError(f"--captions {e}") from e
    return [captions.get(im.relative) for im in images]


# --- checking -------------------------------------------------------------------------------------

def check_image(image: ImageFile, options: DecodeOptions) -> Checked:
    """The file's bytes when TarSource can read them and the training decoder accepts them."""
    ext = extension(image.relative)
    if ext not in TAR_IMAGE_EXTENSIONS:
        return Checked(None, "unsupported_extension",
                       f".{ext or '(none)'}: tar shards are read as {', '.join(TAR_IMAGE_EXTENSIONS)}")
    try:
        with open(image.path, "rb") as f:
            data = f.read()
    except OSError as e:
        return Checked(None, "unreadable", f"{type(e).__name__}: {e}")
    decoded = decode_image(data, options)
    if not decoded.ok:
        return Checked(None, decoded.reason, decoded.detail)
    return Checked(data)


def checked_images(images: Sequence[ImageFile], options: DecodeOptions,
                   workers: int) -> Iterator[tuple[int, Checked]]:
    """(index, Checked) in input order; decoding runs on a thread pool, a chunk at a time."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(images), CHECK_CHUNK):
            chunk = images[start:start + CHECK_CHUNK]
            yield from enumerate(pool.map(lambda im: check_image(im, options), chunk), start)


# --- writing --------------------------------------------------------------------------------------

def member(name: str, data: bytes) -> tarfile.TarInfo:
    """A regular file with fixed metadata, so that the same input gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class ShardWriter:
    """Writes samples into shard-NNNNN.tar files of `per_shard` samples, each under a temporary
    name until it is complete; `paths` lists the finished shards."""

    def __init__(self, out: str, per_shard: int):
        self.out, self.per_shard = out, per_shard
        self.paths: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._file = None
        self._count = 0

    def _temporary(self, path: str) -> str:
        # A leading dot and no .tar suffix: neither a training glob nor TarSource picks it up.
        return os.path.join(self.out, "." + os.path.basename(path) + ".partial")

    def _open(self) -> None:
        path = os.path.join(self.out, SHARD_PATTERN.format(len(self.paths)))
        self._file = open(self._temporary(path), "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._count = 0

    def _finish(self) -> None:
        path = os.path.join(self.out, SHARD_PATTERN.format(len(self.paths)))
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())  # the rename must not expose a shard that is not on disk
        self._file.close()
        os.replace(self._temporary(path), path)
        self.paths.append(path)
        self._tar = self._file = None

    def write(self, members: dict[str, bytes]) -> None:
        """One sample: {member name: bytes}."""
        if self._tar is None:
            self._open()
        for name, data in members.items():
            self._tar.addfile(member(name, data), io.BytesIO(data))
        self._count += 1
        if self._count == self.per_shard:
            self._finish()

    def close(self) -> None:
        if self._tar is not None:
            self._finish()

    def abort(self) -> None:
        """Drops the shard in progress (after an error): no partial file is left behind."""
        if self._tar is not None:
            self._file.close()
            os.remove(self._temporary(os.path.join(self.out, SHARD_PATTERN.format(len(self.paths)))))
            self._tar = self._file = None


def prepare_out(out: str, overwrite: bool) -> None:
    """Creates --out; refuses one with files in it unless `overwrite`; checks it is writable."""
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder: {e}") from e
    if os.listdir(out) and not overwrite:
        raise UsageError(f"--out {out} is not empty (pass --overwrite to replace its shards)")
    probe = os.path.join(out, ".write-test")
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"--out {out} is not writable: {e}") from e


def remove_stale_shards(out: str, written: Sequence[str]) -> list[str]:
    """Removes shard files in `out` that this run did not write (an older, longer run's)."""
    keep = {os.path.abspath(p) for p in written}
    found = [p for pattern in SHARD_GLOBS for p in glob.glob(os.path.join(glob.escape(out), pattern))]
    stale = [p for p in sorted(found) if os.path.abspath(p) not in keep]
    for path in stale:
        os.remove(path)
    return stale


def write_shards(images: Sequence[ImageFile], out: str, *, per_shard: int, options: DecodeOptions,
                 captions: Sequence[str | None] | None = None, workers: int = 8,
                 progress: bool = True) -> Written:
    """Checks and packs `images` (sorted) into shards in `out`."""
    written = Written([], SkipCounter("images"))
    skips = written.skips
    keys = sample_keys([im.relative for im in images])
    writer = ShardWriter(out, per_shard)
    try:
        with progress_bar(len(images), "shards", enabled=progress) as bar:
            for i, checked in checked_images(images, options, workers):
                bar.update(1)
                if checked.data is None:
                    skips.skip(checked.reason, images[i].relative, checked.detail)
                    continue
                skips.ok()
                sample = {f"{keys[i]}.{extension(images[i].relative)}": checked.data}
                if captions is not None and captions[i] is not None:
                    sample[f"{keys[i]}.txt"] = captions[i].encode("utf-8")
                    written.captioned += 1
                writer.write(sample)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    written.shards = writer.paths
    return written


# --- command line ---------------------------------------------------------------------------------

def training_flags(out: str, min_size: int) -> str:
    """The config flags that train on these shards (open_training_source wants a glob or .tar)."""
    flags = f"--config.data.source={shlex.quote(os.path.join(out, '*.tar'))}"
    if min_size != DecodeOptions().min_side:  # data.min_side's default
        flags += f" --config.data.min_side={min_size}"
    return flags


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vlrm_jax.data.shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="folder (recursive) or glob pattern")
    p.add_argument("--out", required=True, help="folder for shard-00000.tar, ...")
    p.add_argument("--per-shard", type=int, default=1000, metavar="N", help="samples per shard (default 1000)")
    p.add_argument("--min-size", type=int, default=DecodeOptions().min_side, metavar="N",
                   help="skip images whose shorter side is under N pixels (default %(default)s, as data.min_side)")
    p.add_argument("--captions", default=None, metavar="FILE.jsonl",
                   help='{"file", "caption"} rows: written as KEY.txt next to the image')
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--workers", type=int, default=8, help="decoding threads (default 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.per_shard < 1:
        p.error("--per-shard must be >= 1")
    if args.min_size < 1:
        p.error("--min-size must be >= 1")
    return args


def run(args: argparse.Namespace) -> str:
    """Writes the shards; returns the closing report."""
    root, images = find_images(args.images)
    captions = image_captions(args.captions, root, images) if args.captions else None
    prepare_out(args.out, args.overwrite)
    written = write_shards(images, args.out, per_shard=args.per_shard,
                           options=DecodeOptions(min_side=args.min_size),
                           captions=captions, workers=args.workers, progress=not args.quiet)
    shards, skips = written.shards, written.skips
    if not shards:
        raise UsageError(f"no usable image among {len(images)} files: {skips.summary()}")
    stale = remove_stale_shards(args.out, shards)
    good = skips.seen - skips.total
    lines = [f"wrote {good} of {len(images)} images in {len(shards)} shards "
             f"-> {args.out}; {skips.summary()}; minimum size {args.min_size} px (--min-size)"]
    if captions is not None:
        lines.append(f"captions: {written.captioned} of the {good} images have one")
    if stale:
        lines.append(f"removed {len(stale)} older shard files")
    lines.append(f"train on them with: {training_flags(args.out, args.min_size)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging(verbose=False)
    try:
        print(run(args))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
