"""The corpus input parser: folders, globs, manifests, image files, errors."""

from __future__ import annotations

import os

import pytest

from core.errors import InputError
from pipeline.inputs import expand_inputs


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folder_is_walked_recursively_for_images_only(tmp_path):
    a = _touch(tmp_path / "a.jpg")
    b = _touch(tmp_path / "sub" / "deeper" / "B.PNG")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "sub" / "data.csv")
    listing = expand_inputs([str(tmp_path)])
    assert [e.uri for e in listing.entries] == sorted([str(a), str(b)])
    assert listing.roots == (str(tmp_path.resolve()),)
    assert listing.entries[0].size == 1 and listing.entries[0].mtime > 0


def test_glob_manifest_and_file_inputs_are_deduplicated(tmp_path):
    imgs = [_touch(tmp_path / "pics" / f"{i}.jpg") for i in range(3)]
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# my corpus\n{imgs[0]}\n\npics/1.jpg\nfile://{imgs[2]}\npics/missing.jpg\n")
    listing = expand_inputs([str(tmp_path / "pics" / "*.jpg"), str(manifest), str(imgs[1])])
    assert [e.uri for e in listing.entries] == [str(p) for p in imgs]
    assert listing.roots == ()
    assert len(listing.missing) == 1 and listing.missing[0][0].endswith("missing.jpg")


def test_symlink_loops_and_dangling_links_do_not_hang(tmp_path):
    a = _touch(tmp_path / "a.jpg")
    os.symlink(tmp_path, tmp_path / "loop")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    assert [e.uri for e in expand_inputs([str(tmp_path)]).entries] == [str(a)]


def test_unicode_and_spaces_in_names(tmp_path):
    p = _touch(tmp_path / "été photos" / "ça va 猫.jpeg")
    assert expand_inputs([str(tmp_path)]).entries[0].uri == str(p)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: [], "no input"),
        (lambda t: [str(t / "nope")], "does not exist"),
        (lambda t: [str(t / "*.jpg")], "matched no image files"),
        (lambda t: [" "], "empty input"),
    ],
)
def test_bad_inputs_raise_input_error(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        expand_inputs(make(tmp_path))


def test_fifos_and_devices_are_never_listed(tmp_path):
    """A named pipe called .jpg would block any reader forever: it is not part of the corpus."""
    a = _touch(tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    assert [e.uri for e in expand_inputs([str(tmp_path)]).entries] == [str(a)]
    assert [e.uri for e in expand_inputs([str(tmp_path / "*.jpg")]).entries] == [str(a)]
    with pytest.raises(InputError, match="not a regular file"):
        expand_inputs([str(tmp_path / "pipe.jpg")])
