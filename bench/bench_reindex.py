"""Re-index cost: full run, no-change re-run, and a re-run after 1% of the files changed.

    python bench/bench_reindex.py [--images 5000] [--model ViT-B-32] [--pretrained random]
                                  [--change 0.01]

The 1% change mixes new, modified, moved and deleted files (a quarter each). Prints each time
and its ratio to the full run (the baseline measured in the same run); a re-run should cost
about the changed fraction of a full embedding pass plus fixed overhead (process start-up,
listing, planning, index rebuild).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from bench_pipeline import fixed_random, index_command, make_images


def change(folder: Path, fraction: float, seed: int = 1) -> dict[str, int]:
    """Change ``fraction`` of the files: a quarter each new, modified, moved, deleted."""
    files = sorted(folder.glob("*.jpg"))
    n = max(4, int(len(files) * fraction)) // 4
    extra = folder / "extra"
    make_images(extra, 2 * n, 224, seed=seed)  # other pictures than the corpus's (seed 0)
    fresh = sorted(extra.glob("*.jpg"))
    for i, src in enumerate(fresh[:n]):
        src.rename(folder / f"new-{i}.jpg")
    for i, target in enumerate(files[:n]):
        shutil.copy(fresh[n + i], target)
    for i, target in enumerate(files[n : 2 * n]):
        target.rename(folder / f"moved-{i}.jpg")
    for target in files[2 * n : 3 * n]:
        os.remove(target)
    shutil.rmtree(extra)
    return {"new": n, "modified": n, "moved": n, "deleted": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="random")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--change", type=float, default=0.01)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, home = Path(tmp) / "photos", Path(tmp) / "home"
        if args.pretrained == "random":  # one set of random weights for every run (a fresh draw each load)
            args.model, args.pretrained = fixed_random(args.model, Path(tmp) / "model"), None
        make_images(folder, args.images, 224)
        full, r_full = index_command(folder, home, args)
        same, r_same = index_command(folder, home, args)
        changed = change(folder, args.change)
        delta, r_delta = index_command(folder, home, args)
    assert r_full["embedded"] == args.images and r_same["embedded"] == 0, (r_full, r_same)
    print(f"{args.images} JPEG images, model {args.model} ({args.pretrained}), batch {args.batch_size}")
    print("each time is a whole `vistag index` command: a fresh process, imports included")
    print(f"full index          : {full:8.1f} s  ({args.images / full:.1f} images/s)")
    print(f"no-change re-run    : {same:8.1f} s  ratio to full {same / full:.3f}")
    print(
        f"{args.change:.0%} changed re-run : {delta:8.1f} s  ratio to full {delta / full:.3f}  "
        f"({changed}; embedded {r_delta['embedded']}, reused {r_delta['reused']}, deleted {r_delta['deleted']})"
    )


if __name__ == "__main__":
    main()
