"""Corrected images as evidence in image space, added to the text scores; no training.

Both methods add to the (N, C) cosines to the label prompts a term built from the "keys": the
corpus vectors of the images people confirmed (+) or rejected (-) for a label.

- ``zeroshot`` (few-shot prototype): ``s[x, c] = cos(x, t_c) + LAMBDA * (x . m+_c - mu+_c)
  - LAMBDA * (x . m-_c - mu-_c)``, with m+_c (m-_c) the mean of the confirmed (rejected) images of
  c and mu the mean of ``x . m`` over the corpus (so the term is zero on average and labels with
  corrections are not favoured over labels without). Image-image cosines vary several times more
  than image-text ones (the modality gap), hence a weight below 1.
- ``fewshot`` (Tip-Adapter's training-free cache, Zhang et al. 2022): ``s[x, c] = cos(x, t_c) +
  ALPHA * sum_k exp(-BETA (1 - x . k)) y_kc`` with y_kc = +1 for a confirmed key of c, -1 for a
  rejected one. Sharper than the mean: a key votes for its near duplicates only.

Without corrections both are exactly the zero-shot scores. Weights were chosen on synthetic
features with a modality gap and on the shapes corpus (``bench/bench_corrections.py``,
``docs/benchmarks.md``). Leave-self-out scores (for calibrating on the corrected pairs) drop every
key of the image itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from query.corrections import Corrections

LAMBDA = 0.5  # prototype weight (zeroshot)
ALPHA = 0.05  # cache weight (fewshot), on the cosine scale (Tip-Adapter's 1.0 on logits x100 ~ 0.01)
BETA = 5.5  # cache sharpness (Tip-Adapter's default)
BLOCK = 1024  # rows of a (rows, keys) affinity block


@dataclass(frozen=True)
class Evidence:
    """Keys (K, D) float32 with their image ``rows`` (K,), label ``cols`` (K,), ``sign`` (K,) +1/-1,
    ``kernel`` "mean" (prototype) or "cache", the label count ``n_cols``; for "mean",
    ``protos`` (P, D) with ``proto_cols``, ``proto_sign`` and ``offset`` (P,) (the corpus mean)."""

    kernel: str
    keys: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    sign: np.ndarray
    n_cols: int
    protos: np.ndarray
    proto_cols: np.ndarray
    proto_sign: np.ndarray
    offset: np.ndarray

    def add(self, xq: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """(Q, C) ``sims`` (cosines to the labels) plus the evidence for (Q, D) ``xq``."""
        out = np.asarray(sims, np.float64).copy()
        if self.kernel == "mean":
            term = LAMBDA * ((xq @ self.protos.T).astype(np.float64) - self.offset) * self.proto_sign
            np.add.at(out.T, self.proto_cols, term.T)
            return out
        for a in range(0, len(xq), BLOCK):
            affinity = np.exp(-BETA * (1.0 - (xq[a : a + BLOCK] @ self.keys.T).astype(np.float64)))
            out[a : a + BLOCK] += ALPHA * (affinity * self.sign) @ self._onehot()
        return out

    def add_without_self(self, xq: np.ndarray, sims: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Like :meth:`add` for the corpus images at positions ``rows`` (Q,), leaving out their own keys."""
        out = np.asarray(sims, np.float64).copy()
        onehot = self._onehot()
        for a in range(0, len(xq), BLOCK):
            dots = (xq[a : a + BLOCK] @ self.keys.T).astype(np.float64)
            keep = self.rows[None, :] != rows[a : a + BLOCK, None]
            if self.kernel == "cache":
                out[a : a + BLOCK] += ALPHA * (np.exp(-BETA * (1.0 - dots)) * keep * self.sign) @ onehot
                continue
            for s in (1, -1):  # the mean of the other keys of each (label, sign), minus its offset
                mine = (self.sign == s)[None, :] & keep
                count = mine.astype(np.float64) @ onehot
                mean = np.divide((dots * mine) @ onehot, count, out=np.zeros_like(count), where=count > 0)
                offset = np.zeros(self.n_cols)
                offset[self.proto_cols[self.proto_sign == s]] = self.offset[self.proto_sign == s]
                out[a : a + BLOCK] += s * LAMBDA * np.where(count > 0, mean - offset, 0.0)
        return out

    def _onehot(self) -> np.ndarray:
        onehot = np.zeros((len(self.cols), self.n_cols))
        onehot[np.arange(len(self.cols)), self.cols] = 1.0
        return onehot

    def save(self, path: Path) -> None:
        np.savez(path, **{name: np.asarray(getattr(self, name)) for name in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> Evidence | None:
        if not path.exists():
            return None
        arrays = dict(np.load(path))
        return cls(**{k: (v.item() if v.ndim == 0 else v) for k, v in arrays.items()})  # type: ignore[arg-type]


def build_evidence(
    method: str, xb: np.ndarray, fixes: Corrections, n_cols: int, sample: slice | np.ndarray
) -> Evidence | None:
    """The evidence of corrections ``fixes`` (rows: positions into ``xb`` (N, D)) for ``method``
    (``zeroshot``: prototypes, ``fewshot``: cache); None without corrections. ``sample``: the
    corpus rows the prototypes' offsets are averaged over."""
    if not len(fixes):
        return None
    keys = np.ascontiguousarray(xb[fixes.rows], dtype=np.float32)
    sign = np.where(fixes.verdict, 1.0, -1.0)
    empty = np.zeros((0, keys.shape[1]), np.float32)
    if method == "fewshot":
        none = np.zeros(0)
        return Evidence(
            "cache", keys, fixes.rows, fixes.cols, sign, n_cols, empty, none.astype(np.int64), none, none
        )
    groups = sorted(set(zip(fixes.cols.tolist(), sign.tolist(), strict=True)))
    protos = np.stack([keys[(fixes.cols == c) & (sign == s)].mean(axis=0) for c, s in groups]).astype(
        np.float32
    )
    offset = (xb[sample] @ protos.T).astype(np.float64).mean(axis=0)
    cols = np.array([c for c, _ in groups], np.int64)
    return Evidence(
        "mean",
        keys,
        fixes.rows,
        fixes.cols,
        sign,
        n_cols,
        protos,
        cols,
        np.array([s for _, s in groups]),
        offset,
    )
