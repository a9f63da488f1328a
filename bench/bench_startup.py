"""Start-up of read commands: ``vistag search`` and others as fresh processes, against importing the
libraries a search needs at least (numpy, faiss, SQLAlchemy), measured in the same run.

    python bench/bench_startup.py [--runs 7] [--images 40]

Indexes a small generated archive with a tiny random model (in a temporary home), asks one query
once so that its embedding is cached, then times, alternating run by run: the baseline
``python -c "import numpy, faiss, sqlalchemy"``, a repeated ``vistag search`` (its embedding
cached: no model is loaded), ``vistag search`` of a new query each time (the text tower loads),
``vistag status`` and ``vistag similar ID``. Prints medians, the ratio of each to the baseline,
each command's peak memory, and which heavy modules (Apache Beam, torch) each one imported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "import numpy, faiss, sqlalchemy"
PROBE = """
import json, re, sys
from vistag.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("apache_beam", "torch", "open_clip", "scipy", "pyarrow") if m in sys.modules)
# VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss over fork and exec
peak_mb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) // 1024
print(json.dumps({"code": code, "heavy": heavy, "peak_mb": peak_mb}), file=sys.stderr)
"""


def timed(args: list[str]) -> tuple[float, dict]:
    """Seconds of one fresh process running ``args``, and what the probe reported (if any)."""
    start = time.perf_counter()
    run = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])}... failed: {run.stderr.strip()[-300:]}")
    lines = [line for line in run.stderr.strip().splitlines() if line.startswith("{")]
    return seconds, json.loads(lines[-1]) if lines else {}


def build(tmp: Path, images: int) -> tuple[Path, str]:
    from vistag import Archive, synth

    model = "local-dir:" + str(synth.make_tiny_model(tmp / "model"))
    synth.make_corpus(tmp / "images", images, seed=0)
    home = tmp / "home"
    with Archive(home) as archive:
        archive.index([tmp / "images"], model=model)
    return home, model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="runs of each command (default 7)")
    ap.add_argument("--images", type=int, default=40, help="images in the archive (default 40)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, _ = build(Path(tmp), args.images)
        probe = [sys.executable, "-c", PROBE]
        timed([*probe, "search", "a photo of a red circle", "--home", str(home)])  # cache the query
        commands = {
            "import numpy, faiss, sqlalchemy": lambda i: [sys.executable, "-c", BASELINE],
            "vistag search (cached query)": lambda i: [
                *probe,
                "search",
                "a photo of a red circle",
                "--home",
                str(home),
            ],
            "vistag search (new query)": lambda i: [
                *probe,
                "search",
                f"a photo number {i}",
                "--home",
                str(home),
            ],
            "vistag status": lambda i: [*probe, "status", "--home", str(home)],
            "vistag similar 1": lambda i: [*probe, "similar", "1", "--home", str(home)],
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        reports: dict[str, dict] = {}
        for i in range(args.runs):
            for name, command in commands.items():
                took, report = timed(command(i))
                seconds[name].append(took)
                reports[name] = report or reports.get(name, {})
    base = statistics.median(seconds["import numpy, faiss, sqlalchemy"])
    print(
        f"{args.runs} runs each, fresh processes, median wall time; archive of {args.images} images, tiny model"
    )
    for name, values in seconds.items():
        report = reports.get(name, {})
        extra = (
            f"  peak {report['peak_mb']} MB, imported {report['heavy'] or 'no heavy module'}"
            if report
            else ""
        )
        print(
            f"{name:<32}: {statistics.median(values):6.2f} s  ratio to the imports {statistics.median(values) / base:5.2f}{extra}"
        )


if __name__ == "__main__":
    main()
