"""Tagging throughput and quality on a generated archive of coloured shapes.

    python bench/bench_tagging.py [--images 2000] [--model local-dir:tests/fixtures/shapes-clip]
                                  [--labels shape|colour-shape] [--store-top N]

Indexes a generated archive (vistag.synth: one shape per image, plain or noisy backgrounds),
then prints images/s of a zero-shot tag run and of a ZLaP tag run over the indexed corpus
(the baseline is the raw matrix product of the same embeddings, measured in the same run), and
the evaluation table of both methods against the generated ground truth.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_MODEL = f"local-dir:{ROOT / 'tests' / 'fixtures' / 'shapes-clip'}"


def truth_file(made: list, folder: Path, kind: str) -> tuple[Path, list[str]]:
    from vistag import synth

    names = [synth.label(spec) if kind == "colour-shape" else spec.shape for _, spec in made]
    path = folder / "truth.csv"
    path.write_text("uri,label\n" + "".join(f"{p},{n}\n" for (p, _), n in zip(made, names, strict=True)))
    return path, sorted(set(names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--labels", choices=("shape", "colour-shape"), default="colour-shape")
    ap.add_argument(
        "--store-top", type=int, default=None, help="store each image's N best labels (default: all)"
    )
    args = ap.parse_args()
    from query.tagging import corpus_matrix
    from vistag import Archive, synth

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "archive"
        made = synth.make_corpus(folder, args.images, seed=7)
        truth, labels = truth_file(made, Path(tmp), args.labels)
        with Archive(Path(tmp) / "home") as archive:
            archive.index([folder], model=args.model)
            ids, xb = corpus_matrix(archive.home, archive.catalog, archive.searcher.version())
            text = archive.searcher.encode_text([f"a photo of a {x}." for x in labels])
            start = time.perf_counter()
            _ = np.argsort(-(xb @ text.T), axis=1)
            raw = len(ids) / (time.perf_counter() - start)
            rates = {}
            for method in ("zeroshot", "zlap"):
                start = time.perf_counter()
                archive.tag(labels, method=method, top=1, store_top=args.store_top)
                rates[method] = len(ids) / (time.perf_counter() - start)
            report = archive.evaluate(str(truth), labels)
    print(f"{args.images} generated images, {len(labels)} labels ({args.labels}), model {args.model}")
    print(f"raw scores + ranking (baseline) : {raw:12,.0f} images/s")
    stored = len(labels) if args.store_top is None else min(args.store_top, len(labels))
    for method, rate in rates.items():
        print(
            f"tag --method {method:9}         : {rate:12,.0f} images/s  (ratio to raw {rate / raw:.4f}; stores "
            f"{stored} of {len(labels)} scores per image)"
        )
    results = report["methods"]
    print(f"{'':22}{'zeroshot':>12}{'zlap':>12}")
    for key, name in (("top1", "top-1 accuracy"), ("map", "mAP")):
        print(f"{name:22}{results['zeroshot'][key]:12.3f}{results['zlap'][key]:12.3f}")
    for metric in ("precision", "recall"):
        means = [np.mean([v[metric] for v in results[m]["labels"].values()]) for m in ("zeroshot", "zlap")]
        print(f"{'mean ' + metric + ' @0.5':22}{means[0]:12.3f}{means[1]:12.3f}")


if __name__ == "__main__":
    main()
