"""Decode bombs against normal images of the same pixel size: time and peak memory of ``decode_image``.

    python bench/bench_decode_bounds.py [--decode path/to/decode.py] [--timeout 300] [--only NAME]

Each row decodes one generated file in a fresh process (peak RSS is ``VmHWM``) and prints its
time and peak beside those of its baseline, a normal image of the same size decoded in the
same run, as ratios. ``--decode`` measures another version of ``core/decode.py`` (e.g.
``git show HEAD~1:core/decode.py > /tmp/old_decode.py``); a refused file prints its reason.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vistag.synth.hostile import comment_bomb_gif, scan_bomb_jpeg, segment_bomb_jpeg, sixteen_bit_png  # noqa: E402

CHILD = """
import importlib.util, json, re, sys, time
spec = importlib.util.spec_from_file_location("decode_under_test", sys.argv[1])
mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)
data = open(sys.argv[2], "rb").read()
start = time.perf_counter()
try:
    out = mod.decode_image(data, draft_size=int(sys.argv[3])).image.size
except mod.DecodeError as err:
    out = err.reason
seconds = time.perf_counter() - start
peak = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"seconds": seconds, "peak_mb": peak / 1024, "result": str(out)}))
"""


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def cases() -> list[tuple[str, int, bytes, bytes]]:
    """(name, draft size, bomb, baseline of the same pixel size)."""
    grey_ramp = np.broadcast_to(np.arange(8000, dtype=np.uint32) * 255 // 7999, (5000, 8000)).astype(np.uint8)
    big_png = _save(Image.fromarray(grey_ramp), "PNG")
    plain_jpeg = scan_bomb_jpeg(6000, 4000, 0)
    return [
        ("jpeg 24 MP + 20k empty scans", 224, scan_bomb_jpeg(6000, 4000, 20_000), plain_jpeg),
        ("jpeg 24 MP + 40k empty scans", 224, scan_bomb_jpeg(6000, 4000, 40_000), plain_jpeg),
        ("jpeg 5M empty COM segments", 224, segment_bomb_jpeg(5_000_000), segment_bomb_jpeg(0)),
        ("gif comment, 1M sub-blocks", 224, comment_bomb_gif(1_000_000), comment_bomb_gif(1)),
        ("png 40 MP 16-bit grey", 0, sixteen_bit_png(8000, 5000), big_png),
        ("png 40 MP 16-bit grey, draft", 224, sixteen_bit_png(8000, 5000), big_png),
    ]


def measure(decode: Path, path: Path, draft: int, timeout: float) -> dict:
    try:
        run = subprocess.run(
            [sys.executable, "-c", CHILD, str(decode), str(path), str(draft)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"seconds": timeout, "peak_mb": float("nan"), "result": f"still running after {timeout:.0f} s"}
    if run.returncode != 0:
        return {"seconds": float("nan"), "peak_mb": float("nan"), "result": run.stderr.strip()[-200:]}
    return json.loads(run.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode", type=Path, default=ROOT / "core" / "decode.py")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    args = parser.parse_args(argv)
    print(f"{'case':31} {'bytes':>9} {'s':>8} {'x base':>7} {'peak MB':>8} {'x base':>7}  result")
    with tempfile.TemporaryDirectory() as tmp:
        for name, draft, bomb, baseline in cases():
            if args.only not in name:
                continue
            rows = {}
            for kind, data in (("base", baseline), ("bomb", bomb)):
                path = Path(tmp) / kind
                path.write_bytes(data)
                rows[kind] = measure(args.decode, path, draft, args.timeout) | {"bytes": len(data)}
            base, row = rows["base"], rows["bomb"]
            print(
                f"{name:31} {row['bytes']:9d} {row['seconds']:8.3f} {row['seconds'] / base['seconds']:7.1f} "
                f"{row['peak_mb']:8.0f} {row['peak_mb'] / base['peak_mb']:7.2f}  {row['result'][:60]}"
            )
            print(
                f"{'  baseline':31} {base['bytes']:9d} {base['seconds']:8.3f} {'':7} {base['peak_mb']:8.0f}"
            )


if __name__ == "__main__":
    main()
