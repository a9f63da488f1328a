"""A generated archive: shape images (JPEG and PNG, several sizes), noise textures in a subfolder,
and files that are not images (corrupt, empty, HTML, truncated)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from vistag.synth.corpus import make_corpus

#: File name -> content of the bad files ``write_corpus`` adds (each must be recorded as a failure).
BAD_FILES = {
    "corrupt.jpg": b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20,
    "text.png": b"<html><body>not an image</body></html>",
    "empty.jpg": b"",
}


@dataclass(frozen=True)
class Corpus:
    """A written archive: its root folder, the good images and the bad files (sorted paths)."""

    root: Path
    good: tuple[Path, ...]
    bad: tuple[Path, ...]


def write_corpus(root: Path, n: int = 24, seed: int = 0) -> Corpus:
    """Write ``n`` shape images under ``root/shapes``, 3 noise textures under ``root/textures`` and
    the bad files (``BAD_FILES`` plus a truncated JPEG) in ``root`` itself."""
    made = make_corpus(root / "shapes", n, seed=seed)
    good = [Path(p) for p, _ in made]
    textures = root / "textures"
    textures.mkdir()
    good += _textures(textures, seed)
    bad = []
    for name, data in BAD_FILES.items():
        (root / name).write_bytes(data)
        bad.append(root / name)
    truncated = root / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:200] if good[0].suffix == ".jpg" else _jpeg_bytes()[:200])
    bad.append(truncated)
    return Corpus(root, tuple(sorted(good)), tuple(sorted(bad)))


def _jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _textures(folder: Path, seed: int) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i, (w, h) in enumerate([(40, 40), (120, 80), (33, 97)]):
        arr = (rng.random((h, w, 3)) * 255).astype("uint8")
        path = folder / f"noise-{i}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths
