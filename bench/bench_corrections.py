"""Learning from corrections: accuracy against shots, calibration, and the cost at scale.

Three parts (``--parts``, default all):

- ``synthetic``: clustered features with a modality gap (``bench_zlap.synth``: text = class
  centre + shared offset + noise), ``--n`` images of ``--classes`` classes. Top-1 accuracy of
  zeroshot, zlap and fewshot for 0, 1, 2, 4, 8 confirmed images per class (nested draws, the same
  test images for every row: those never drawn), through the product's scoring functions; then
  ECE (10 bins, top-1) before and after a simulated review of ``--review`` images (their top-1
  label confirmed when right, rejected when wrong), on the images not reviewed.
- ``shapes``: a generated shapes corpus (``--images``, ``--style``) indexed with
  ``tests/fixtures/shapes-clip``, the same table through ``Archive.evaluate(..., shots=...)``.
- ``scale``: a tag run's scoring (zeroshot and zlap, no SQL) of ``--scale-images`` synthetic
  vectors with ``--scale-corrections`` corrections against none.

Every figure is printed with its ratio to the no-correction baseline of the same run.

Usage::

    python bench/bench_corrections.py --parts synthetic           # ~1 min
    python bench/bench_corrections.py --parts shapes --images 1200
    python bench/bench_corrections.py --parts scale --scale-images 1000000
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_zlap  # noqa: E402 - beside this file

from indexer.graph import GRAPH_K, KnnGraph  # noqa: E402
from query.inductive import fit_zlap  # noqa: E402
from query.learning import Corrections, expected_calibration_error  # noqa: E402
from query.scoring import CorpusScores, TagConfig  # noqa: E402
from query.shots import draw, held_out_rows  # noqa: E402
from query.tagging import image_space_scores  # noqa: E402
from query.vocab import Label  # noqa: E402

METHODS = ("zeroshot", "zlap", "fewshot")
SHOTS = (0, 1, 2, 4, 8)
ROOT = Path(__file__).resolve().parents[1]
MODEL = f"local-dir:{ROOT / 'tests' / 'fixtures' / 'shapes-clip'}"


class Synthetic:
    """Features (N, D), text (C, D), labels (N,), the kNN graph, and the product's scoring."""

    def __init__(self, n: int, classes: int, dim: int, seed: int) -> None:
        x, _, t, y, _ = bench_zlap.synth(n, 0, classes, dim, seed)
        self.setup(x, t, y, [f"class {i}" for i in range(classes)])

    @classmethod
    def of(cls, x: np.ndarray, t: np.ndarray, y: np.ndarray, names: list[str]) -> Synthetic:
        """Another corpus: (N, D) vectors, (C, D) label embeddings, (N,) true label positions."""
        data = cls.__new__(cls)
        data.setup(x, t, y, names)
        return data

    def setup(self, x: np.ndarray, t: np.ndarray, y: np.ndarray, names: list[str]) -> None:
        import faiss

        self.x, self.t, self.y = np.ascontiguousarray(x, np.float32), np.asarray(t, np.float32), y
        D, I = faiss.knn(self.x, self.x, GRAPH_K, metric=faiss.METRIC_INNER_PRODUCT)
        self.graph = KnnGraph(np.arange(len(x), dtype=np.int64), D.astype(np.float32), I.astype(np.int64))
        self.text = (self.t, np.zeros((0, x.shape[1]), np.float32), np.zeros(0, np.int64))
        self.config = TagConfig(tuple(Label(name) for name in names))
        self.labels = [{names[c]} for c in self.y.tolist()]

    def score(self, method: str, fixes: Corrections) -> CorpusScores:
        config = TagConfig(self.config.labels, method=method)
        if method == "zlap":
            return fit_zlap(self.graph, self.x, self.text, config, None, fixes=fixes)
        return image_space_scores(self.graph.ids, self.x, self.text, config, fixes, None)


def top1_and_ece(corpus: CorpusScores, rows: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    scored = corpus.rows(rows)
    best = scored.scores.argmax(axis=1)
    correct = best == y[rows]
    conf = scored.confidence[np.arange(len(rows)), best]
    return float(correct.mean()), expected_calibration_error(conf, correct)


def synthetic(args: argparse.Namespace) -> None:
    data = Synthetic(args.n, args.classes, args.dim, args.seed)
    names = data.config.names
    test = held_out_rows(data.labels, names, SHOTS)
    print(f"synthetic: {args.n} images, {args.classes} classes, d={args.dim}, {len(test)} test images")
    table: dict[int, dict[str, float]] = {}
    for n in SHOTS:
        rows, cols = draw(data.labels, names, n)
        fixes = Corrections.confirmed(rows, cols)
        table[n] = {m: top1_and_ece(data.score(m, fixes), test, data.y)[0] for m in METHODS}
    print_shots(table)
    review(data, args.review)
    review_uncertain(data)


def print_shots(table: dict[int, dict[str, float]]) -> None:
    print(f"{'shots':>6}" + "".join(f"{m:>22}" for m in METHODS))
    for n, row in table.items():
        cells = "".join(f"{row[m]:>10.3f} (x{row[m] / table[0][m]:.3f})" for m in METHODS)
        print(f"{n:>6}{cells}")


def review(data: Synthetic, count: int) -> None:
    """ECE before and after people review ``count`` images' top-1 labels: without corrections,
    with them but the pseudo-label calibration, with them and the calibration fitted on them."""
    rng = np.random.default_rng(1)
    reviewed = np.sort(rng.choice(len(data.y), count, replace=False))
    rest = np.setdiff1d(np.arange(len(data.y)), reviewed)
    print(f"review of {count} images' top-1 label; ECE (10 bins) and top-1 on the other {len(rest)}:")
    for method in METHODS:
        before = data.score(method, Corrections.none())
        best = before.rows(reviewed).scores.argmax(axis=1)
        fixes = Corrections(reviewed, best.astype(np.int64), best == data.y[reviewed])
        after = data.score(method, fixes)
        pseudo = replace(after, calibration=replace(after.calibration, top_a=1.0, top_b=0.0))
        (a0, e0), (a1, e1) = top1_and_ece(before, rest, data.y), top1_and_ece(after, rest, data.y)
        e_pseudo = top1_and_ece(pseudo, rest, data.y)[1]
        counts = fixes.counts()
        print(
            f"  {method:9} ({counts['confirmed']} confirmed, {counts['rejected']} rejected): top-1 {a0:.3f} -> "
            f"{a1:.3f} (x{a1 / a0:.3f}); ECE {e0:.3f} -> {e_pseudo:.3f} with the pseudo-label calibration "
            f"(x{e_pseudo / e0:.2f}), {e1:.3f} calibrated on the corrections (x{e1 / e0:.2f})"
        )


def review_uncertain(data: Synthetic, per_label: int = 2, looks: int = 8) -> None:
    """People answer ``review``'s questions until each label has ``per_label`` confirmed images
    (at most ``looks`` questions per label): per label, the images with the label among their 3
    best, least certain first (confidence nearest 0.5, of ZLaP without corrections), confirmed
    when the label is true, else rejected. Top-1 of each method without and with those
    corrections, on the images never asked about."""
    scored = data.score("zlap", Corrections.none()).rows(slice(None))
    top3 = np.argsort(-scored.scores, axis=1)[:, :3]
    asked: set[int] = set()
    rows, cols, verdict = [], [], []
    for c in range(len(data.config.labels)):
        candidates = [i for i in np.flatnonzero((top3 == c).any(axis=1)).tolist() if i not in asked]
        candidates.sort(key=lambda i: abs(scored.confidence[i, c] - 0.5))
        got = 0
        for i in candidates[:looks]:
            if got == per_label:
                break
            asked.add(i)
            rows.append(i), cols.append(c), verdict.append(bool(data.y[i] == c))
            got += int(data.y[i] == c)
    fixes = Corrections(np.array(rows, np.int64), np.array(cols, np.int64), np.array(verdict, bool))
    rest = np.array(sorted(set(range(len(data.y))) - asked), np.int64)
    counts = fixes.counts()
    print(
        f"review of the least certain images until {per_label} confirmed per label (at most {looks} "
        f"questions a label): {counts['confirmed']} confirmed, {counts['rejected']} rejected; top-1 on the "
        f"other {len(rest)} images:"
    )
    for method in METHODS:
        before = top1_and_ece(data.score(method, Corrections.none()), rest, data.y)[0]
        after = top1_and_ece(data.score(method, fixes), rest, data.y)[0]
        print(f"  {method:9} {before:.3f} -> {after:.3f} (x{after / before:.3f})")


def shapes(args: argparse.Namespace) -> None:
    from vistag import Archive, synth

    style = (
        {"style": args.style}
        if args.style and "style" in inspect.signature(synth.make_corpus).parameters
        else {}
    )
    with tempfile.TemporaryDirectory() as tmp:
        made = synth.make_corpus(Path(tmp) / "archive", args.images, seed=11, **style)
        truth = Path(tmp) / "truth.csv"
        truth.write_text("uri,label\n" + "".join(f"{p},{synth.label(s)}\n" for p, s in made))
        with Archive(Path(tmp) / "home") as archive:
            archive.index([Path(tmp) / "archive"], model=args.model)
            report = archive.evaluate(str(truth), list(synth.LABELS), methods=METHODS, shots=SHOTS)
            data = shapes_features(archive, truth)
    shots = report["shots"]
    print(
        f"shapes corpus: {args.images} images, style {style.get('style', 'classic')}, 48 labels, {report['shots_test_images']} test images"
    )
    print_shots({int(n): {m: row[m]["top1"] for m in METHODS} for n, row in shots.items()})
    print(
        "ECE (top-1, 10 bins) per shots: "
        + "; ".join(
            f"{n}: " + ", ".join(f"{m} {row[m]['ece']:.3f}" for m in METHODS) for n, row in shots.items()
        )
    )
    review_uncertain(data)


def shapes_features(archive: Any, truth: Path) -> Synthetic:
    """An indexed shapes archive as vectors, label embeddings and each image's one true label."""
    from query.evaluate import read_truth
    from query.tagging import load_corpus
    from query.vocab import SHORT_TEMPLATES
    from vistag import synth

    names = list(synth.LABELS)
    config = archive._tag_config(names, "zeroshot", 1, 0.5, SHORT_TEMPLATES, {})  # noqa: SLF001
    _, text, ids, xb = load_corpus(archive.home, archive.catalog, archive.searcher, config)
    found = read_truth(str(truth), archive.catalog)
    rows = np.searchsorted(ids, found.ids)
    y = np.array([names.index(next(iter(labels))) for labels in found.labels])
    return Synthetic.of(xb[rows], text[0], y, names)


def scale(args: argparse.Namespace) -> None:
    """Scoring time of a tag run with corrections against none (no SQL inserts)."""
    import faiss

    from query.scoring import CHUNK

    faiss.omp_set_num_threads(os.cpu_count() or 1)

    n, c = args.scale_images, args.scale_classes
    x, _, t, y, _ = bench_zlap.synth(n, 0, c, args.dim, args.seed)
    start = time.perf_counter()
    if n <= 100_000:
        D, I = faiss.knn(x, x, GRAPH_K, metric=faiss.METRIC_INNER_PRODUCT)
        how = "exact"
    else:  # as bench_zlap's IVF-Flat graph (the graph is shared by both runs and not timed)
        knn_args = argparse.Namespace(nlist=0, nprobe=8)
        (D, I), facts = bench_zlap.image_knn(x, GRAPH_K, "ivf", knn_args)
        how = f"IVF-Flat nlist {facts['nlist']} nprobe 8, recall@{GRAPH_K} {facts['recall']:.3f}"
    took = time.perf_counter() - start
    print(f"scale: {n:,} images, {c} labels, d={args.dim}; kNN graph ({how}) {took:.1f} s")
    graph = KnnGraph(np.arange(n, dtype=np.int64), D.astype(np.float32), I.astype(np.int64))
    text = (t, np.zeros((0, args.dim), np.float32), np.zeros(0, np.int64))
    labels = tuple(Label(f"class {i}") for i in range(c))
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(n, args.scale_corrections, replace=False))
    verdict = rng.random(len(rows)) < 0.7
    fixes = Corrections(rows, np.where(verdict, y[rows], (y[rows] + 1) % c).astype(np.int64), verdict)
    for method in ("zeroshot", "zlap"):
        config = TagConfig(labels, method=method)
        times = {}
        for name, used in (("none", Corrections.none()), ("corrections", fixes)):
            start = time.perf_counter()
            if method == "zlap":
                scores = fit_zlap(graph, x, text, config, None, fixes=used)
            else:
                scores = image_space_scores(graph.ids, x, text, config, used, None)
            for block in scores.chunks(CHUNK, confidence=False):  # score, calibrate, force, rank
                block.confidence_at(np.argsort(-block.scores, axis=1)[:, :3])
            times[name] = time.perf_counter() - start
        print(
            f"  {method:9}: none {times['none']:.1f} s, {len(fixes):,} corrections {times['corrections']:.1f} s "
            f"(x{times['corrections'] / times['none']:.3f})"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="synthetic,shapes,scale")
    ap.add_argument("--n", type=int, default=3000, help="synthetic images")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--review", type=int, default=300, help="images whose top-1 label is reviewed")
    ap.add_argument("--images", type=int, default=1200, help="shapes corpus size")
    ap.add_argument("--style", default="poster", help="shapes renderer style, when vistag.synth has styles")
    ap.add_argument(
        "--model", default=MODEL, help="model of the shapes part (default: the shipped shapes model)"
    )
    ap.add_argument("--scale-images", type=int, default=1_000_000)
    ap.add_argument("--scale-classes", type=int, default=100)
    ap.add_argument("--scale-corrections", type=int, default=10_000)
    args = ap.parse_args(argv)
    parts: dict[str, Any] = {"synthetic": synthetic, "shapes": shapes, "scale": scale}
    for part in args.parts.split(","):
        parts[part.strip()](args)


if __name__ == "__main__":
    main()
