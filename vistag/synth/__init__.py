"""Generated test data: captioned images of coloured shapes, archives with bad files, hostile files,
and a tiny random-weight OpenCLIP model.

Used by the test-suite, the benchmarks, the offline demo and the script that trains the tiny test
model in ``tests/fixtures/shapes-clip``. Everything is deterministic for a given seed.

- :mod:`vistag.synth.shapes`: ``ShapeSpec``, ``caption``, ``label``, ``LABELS``... and the classic renderer;
  :mod:`vistag.synth.corpus`: ``draw`` and ``make_corpus`` in any style
- :mod:`vistag.synth.styles`: renderer styles ``STYLES`` (``"classic"``, ``"varied"``, ``"poster"``),
  ``TRAIN_STYLES`` and ``HELD_OUT_STYLE`` (the style the test model never sees in training).
- :mod:`vistag.synth.archives`: ``write_corpus`` (shapes, textures and bad files) and ``Corpus``.
- :mod:`vistag.synth.hostile`: ``make_hostile`` and the generators of decoding bombs.
- :mod:`vistag.synth.tiny_model`: ``make_tiny_model`` (needs torch and open_clip when called).
- :mod:`vistag.synth.raw`: ``dng`` and ``with_preview``, camera RAW files (need pidng when called).
"""

from __future__ import annotations

from vistag.synth import hostile
from vistag.synth.archives import BAD_FILES, Corpus, write_corpus
from vistag.synth.corpus import draw, make_corpus
from vistag.synth.shapes import (
    COLORS,
    HELD_OUT,
    LABELS,
    SHAPES,
    SIZES,
    ShapeSpec,
    caption,
    label,
    random_spec,
    stretched,
)
from vistag.synth.styles import HELD_OUT_STYLE, STYLES, TRAIN_STYLES
from vistag.synth.tiny_model import TINY_CFG, TINY_PREPROCESS, make_tiny_model

__all__ = [
    "BAD_FILES",
    "COLORS",
    "HELD_OUT",
    "HELD_OUT_STYLE",
    "LABELS",
    "SHAPES",
    "SIZES",
    "STYLES",
    "TINY_CFG",
    "TINY_PREPROCESS",
    "TRAIN_STYLES",
    "Corpus",
    "ShapeSpec",
    "caption",
    "draw",
    "hostile",
    "label",
    "make_corpus",
    "make_tiny_model",
    "random_spec",
    "stretched",
    "write_corpus",
]
