"""How the ``vistag`` command prints: one-line errors, JSON, and text made safe for a terminal."""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

# what a terminal would act on: C0 and C1 controls (escape sequences), DEL, bidi overrides, lone surrogates
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: object) -> str:
    """``text`` for a terminal: control characters shown as escapes (``\\x1b``), never sent raw (a
    file name could otherwise retitle the terminal or overwrite lines). ``--json`` output is JSON's."""
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], str(text))


def fail(message: str, code: int) -> int:
    print(f"vistag: error: {printable(message)}", file=sys.stderr)
    return code


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=str))


def print_rows(rows: list[dict[str, Any]], as_json: bool, line: Any) -> int:
    if as_json:
        print_json(rows)
    else:
        for row in rows:
            print(line(row))
    return 0


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)
