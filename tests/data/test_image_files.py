"""One rule for which files are images and how they are keyed (caption, evaluate, FolderSource)."""
import os

import pytest

from vlrm_jax.data import FolderSource
from vlrm_jax.data.image_files import (
    IMAGE_EXTENSIONS,
    decode_options,
    find_images,
    glob_root,
    list_folder,
    list_images,
)


@pytest.fixture
def folder(tmp_path):
    for name in ["a.JPG", "b.gif", "c.tiff", "d.tif", "e.bmp", "f.webp", "sub/g.png", "sub/deeper/h.jpeg",
                 "notes.txt", "raw.cr2", "noext"]:
        path = tmp_path / "root" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path / "root"


IMAGES = ["a.JPG", "b.gif", "c.tiff", "d.tif", "e.bmp", "f.webp", "sub/deeper/h.jpeg", "sub/g.png"]


def test_a_folder_lists_image_extensions_in_any_case_recursively(folder):
    assert list_folder(folder) == IMAGES
    assert find_images(str(folder)) == (str(folder), IMAGES)
    assert [os.path.relpath(p, folder) for p in list_images(str(folder))] == IMAGES
    source = FolderSource(folder, process_index=0, process_count=1)
    assert [source.key(i) for i in range(len(source))] == IMAGES


def test_gif_and_tiff_are_images():
    assert {".gif", ".tif", ".tiff"} <= set(IMAGE_EXTENSIONS)


@pytest.mark.parametrize("pattern, root", [
    ("photos/**/*.jpg", "photos"), ("*.png", "."), ("photos/a.jpg", "photos"),
    ("/data/set/x*/img?.png", "/data/set"), ("/*.png", "/"), ("a/b[12]/c/*.jpg", "a"),
])
def test_glob_root_is_the_fixed_leading_folders(pattern, root):
    assert glob_root(pattern) == root


def test_a_glob_takes_every_match_keyed_from_its_root(folder):
    root, keys = find_images(str(folder / "**" / "*.*"))
    assert root == str(folder)
    assert keys == sorted(IMAGES + ["notes.txt", "raw.cr2"])  # named by the pattern: taken
    source = FolderSource.from_spec(str(folder / "sub" / "**" / "*.*"), process_index=0, process_count=1)
    assert (source.root, [source.key(i) for i in range(len(source))]) == (str(folder / "sub"), ["deeper/h.jpeg", "g.png"])


def test_nothing_found_names_the_spec(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*no image files"):
        find_images(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"\*\.png"):
        find_images(str(tmp_path / "*.png"))


def test_every_image_that_decodes_counts_by_default():
    assert decode_options().min_side == 1 and decode_options(32).min_side == 32
    with pytest.raises(ValueError, match="min_side"):
        decode_options(0)
