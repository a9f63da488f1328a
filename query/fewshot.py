"""Corrected images as evidence in image space, added to the text scores; no training.

Both methods add to the (N, C) cosines to the label prompts a term built from the "keys": the
corpus vectors of the images people confirmed (+) or rejected (-) for a label.

- ``zeroshot`` (few-shot prototype): ``s[x, c] = cos(x, t_c) + w * (x . m+_c - mu+_c)
  - w * (x . m-_c - mu-_c)``, with m+_c (m-_c) the mean of the confirmed (rejected) images of
  c and mu the mean of ``x . m`` over the corpus (so the term is zero on average and labels with
  corrections are not favoured over labels without). Image-image cosines vary several times more
  than image-text ones (the modality gap), hence a weight below 1.
- ``fewshot`` (Tip-Adapter's training-free cache, Zhang et al. 2022): ``s[x, c] = cos(x, t_c) +
  w * sum_k exp(-BETA (1 - x . k)) y_kc`` with y_kc = +1 for a confirmed key of c, -1 for a
  rejected one. Sharper than the mean: a key votes for its near duplicates only.

Without corrections both are exactly the zero-shot scores.

**The weight w is chosen per run from the corrections themselves**, as Tip-Adapter tunes its
weight on held-out shots: each confirmed image of a label with at least two confirmed images is
scored without its own key (leave-self-out), and w is the value of ``GRID`` under which most of
them get their confirmed label as the top label, kept only when it beats w = 0 clearly
(:func:`query.learning.choose_by_checks`). How much image
evidence is worth next to the text differs a lot between models (on the synthetic gap features it
lifts top-1 from 0.20 to 0.9; on the shapes model it lowers it: ``docs/benchmarks.md``). With
fewer than ``MIN_CHECKS`` such images the default (``DEFAULT``) is used. Leave-self-out scores
(also for calibrating on the corrected pairs) drop every key of the image itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from query.learning import Corrections, choose_by_checks

GRID = {"mean": (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0), "cache": (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)}
DEFAULT = {"mean": 0.1, "cache": 0.2}  # w when the corrections cannot choose (cosine scale)
MIN_CHECKS = 10  # leave-self-out checks needed to choose w
BETA = 5.5  # cache sharpness (Tip-Adapter's default)
BLOCK = 1024  # rows of a (rows, keys) affinity block


@dataclass(frozen=True)
class Evidence:
    """Keys (K, D) float32 with their image ``rows`` (K,), label ``cols`` (K,), ``sign`` (K,) +1/-1,
    ``kernel`` "mean" (prototype) or "cache", the label count ``n_cols``; for "mean",
    ``protos`` (P, D) with ``proto_cols``, ``proto_sign`` and ``offset`` (P,) (the corpus mean);
    ``weight``: w."""

    kernel: str
    weight: float
    keys: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    sign: np.ndarray
    n_cols: int
    protos: np.ndarray
    proto_cols: np.ndarray
    proto_sign: np.ndarray
    offset: np.ndarray

    def scores(self, xq: np.ndarray, labels_t: np.ndarray) -> np.ndarray:
        """(Q, C) float64 cosines of (Q, D) ``xq`` to labels ``labels_t`` (C, D) plus the evidence;
        the prototypes are folded into the label vectors (``t_c + w (m+_c - m-_c)``, less the
        offsets), so this costs what the cosines alone cost."""
        if self.kernel != "mean":
            return self.add(xq, xq @ labels_t.T)
        folded = labels_t.astype(np.float64)
        bias = np.zeros(len(labels_t))
        for sign in (1.0, -1.0):  # a label has at most one prototype of each sign
            mine = self.proto_sign == sign
            folded[self.proto_cols[mine]] += sign * self.weight * self.protos[mine]
            bias[self.proto_cols[mine]] -= sign * self.weight * self.offset[mine]
        return (xq @ folded.astype(np.float32).T).astype(np.float64) + bias

    def add(self, xq: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """(Q, C) ``sims`` (cosines to the labels) plus the evidence for (Q, D) ``xq``."""
        out = np.asarray(sims, np.float64).copy()
        if self.kernel == "mean":
            term = ((xq @ self.protos.T).astype(np.float64) - self.offset) * (self.weight * self.proto_sign)
            for sign in (1.0, -1.0):  # a label has at most one prototype of each sign
                mine = self.proto_sign == sign
                out[:, self.proto_cols[mine]] += term[:, mine]
            return out
        values = _onehot(self.cols, self.n_cols) * self.sign[:, None]
        for a in range(0, len(xq), BLOCK):
            affinity = np.exp(-BETA * (1.0 - (xq[a : a + BLOCK] @ self.keys.T).astype(np.float64)))
            out[a : a + BLOCK] += self.weight * affinity @ values
        return out

    def add_without_self(self, xq: np.ndarray, sims: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Like :meth:`add` for the corpus images at positions ``rows`` (Q,) and vectors ``xq``,
        leaving out their own keys: a cache entry's own vote, or a prototype's share (the mean
        of the label's other confirmed (rejected) images; none when there are no others)."""
        out = self.add(xq, sims)
        q, j = _matches(np.asarray(rows, np.int64), self.rows)  # query q is key j's image
        if not len(q):
            return out
        own = np.einsum("ij,ij->i", xq[q].astype(np.float64), self.keys[j].astype(np.float64))
        if self.kernel == "cache":
            np.add.at(out, (q, self.cols[j]), -self.weight * self.sign[j] * np.exp(-BETA * (1.0 - own)))
            return out
        group = _group_of(self.cols[j], self.sign[j], self.proto_cols, self.proto_sign)
        sizes = np.bincount(
            _group_of(self.cols, self.sign, self.proto_cols, self.proto_sign), minlength=len(self.protos)
        )
        n = sizes[group].astype(np.float64)
        dot = np.einsum("ij,ij->i", xq[q].astype(np.float64), self.protos[group].astype(np.float64))
        alone = np.where(n > 1, (n * dot - own) / np.maximum(n - 1, 1) - self.offset[group], 0.0)
        np.add.at(out, (q, self.cols[j]), self.weight * self.sign[j] * (alone - (dot - self.offset[group])))
        return out

    def save(self, path: Path) -> None:
        np.savez(path, **{name: np.asarray(getattr(self, name)) for name in self.__dataclass_fields__})

    @classmethod
    def load(cls, path: Path) -> Evidence | None:
        if not path.exists():
            return None
        arrays = dict(np.load(path))
        return cls(**{k: (v.item() if v.ndim == 0 else v) for k, v in arrays.items()})  # type: ignore[arg-type]


def _onehot(cols: np.ndarray, n_cols: int) -> np.ndarray:
    onehot = np.zeros((len(cols), n_cols))
    onehot[np.arange(len(cols)), cols] = 1.0
    return onehot


def _matches(rows: np.ndarray, key_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (q, j) with ``rows[q] == key_rows[j]``, as two int64 arrays."""
    order = np.argsort(key_rows, kind="stable")
    lo = np.searchsorted(key_rows[order], rows, "left")
    hi = np.searchsorted(key_rows[order], rows, "right")
    q = np.repeat(np.arange(len(rows)), hi - lo)
    starts = np.repeat(lo - np.cumsum(np.r_[0, (hi - lo)[:-1]]), hi - lo)
    return q, order[starts + np.arange(len(q))]


def _group_of(
    cols: np.ndarray, sign: np.ndarray, proto_cols: np.ndarray, proto_sign: np.ndarray
) -> np.ndarray:
    """The prototype index of each (label, sign); prototypes are sorted by (label, sign)."""
    code = cols * 2 + (sign > 0)
    return np.searchsorted(proto_cols * 2 + (proto_sign > 0), code)


def build_evidence(
    method: str, xb: np.ndarray, fixes: Corrections, labels_t: np.ndarray, sample: slice | np.ndarray
) -> Evidence | None:
    """The evidence of corrections ``fixes`` (rows: positions into ``xb`` (N, D)) for ``method``
    (``zeroshot``: prototypes, ``fewshot``: cache) with labels ``labels_t`` (C, D), its weight
    chosen by :func:`choose_weight`; None without corrections. ``sample``: the corpus rows the
    prototypes' offsets are averaged over."""
    if not len(fixes):
        return None
    keys = np.ascontiguousarray(xb[fixes.rows], dtype=np.float32)
    sign = np.where(fixes.verdict, 1.0, -1.0)
    common = {"weight": 1.0, "keys": keys, "rows": fixes.rows, "cols": fixes.cols, "sign": sign}
    if method == "fewshot":
        none = np.zeros(0)
        found = Evidence(
            "cache", **common, n_cols=len(labels_t), protos=keys[:0], proto_cols=none.astype(np.int64),
            proto_sign=none, offset=none,
        )  # fmt: skip
    else:
        groups = sorted(set(zip(fixes.cols.tolist(), sign.tolist(), strict=True)))
        protos = np.stack([keys[(fixes.cols == c) & (sign == s)].mean(axis=0) for c, s in groups])
        found = Evidence(
            "mean", **common, n_cols=len(labels_t), protos=protos.astype(np.float32),
            proto_cols=np.array([c for c, _ in groups], np.int64), proto_sign=np.array([s for _, s in groups]),
            offset=(xb[sample] @ protos.T).astype(np.float64).mean(axis=0),
        )  # fmt: skip
    return replace(found, weight=choose_weight(found, xb, labels_t))


def choose_weight(evidence: Evidence, xb: np.ndarray, labels_t: np.ndarray) -> float:
    """w of ``GRID`` under which the most confirmed images (of labels with two or more) top-score
    their label leave-self-out (:func:`query.learning.choose_by_checks`); ``DEFAULT`` below
    ``MIN_CHECKS`` checks."""
    confirmed = evidence.sign > 0
    counts = np.bincount(evidence.cols[confirmed], minlength=evidence.n_cols)
    checks = np.flatnonzero(confirmed & (counts[evidence.cols] >= 2))
    if len(checks) < MIN_CHECKS:
        return DEFAULT[evidence.kernel]
    rows = evidence.rows[checks]
    sims = (xb[rows] @ labels_t.T).astype(np.float64)
    unit = evidence.add_without_self(xb[rows], np.zeros_like(sims), rows)  # the evidence at w = 1
    grid = GRID[evidence.kernel]
    return choose_by_checks(grid, [(sims + w * unit).argmax(axis=1) == evidence.cols[checks] for w in grid])
