"""Crash points for fault-injection tests (off unless ``VISTAG_CRASH_AT`` is set).

``VISTAG_CRASH_AT=POINT`` or ``POINT:N`` ends the process abruptly (``os._exit(137)``, as a
SIGKILL would: no cleanup, no finally blocks) the N-th time (default 1st) ``POINT`` is reached.
Points: ``planned``, ``shard-written``, ``shard-applied``, ``deleted``, ``version-written``,
``published``. Tests use it to prove that a re-run after a crash anywhere ends in the same state.
"""

from __future__ import annotations

import os

ENV = "VISTAG_CRASH_AT"
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os._exit(137)
