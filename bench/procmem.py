"""Process memory figures for the benchmarks, from ``/proc/self`` (Linux; zeros elsewhere).

Standard library only, so a benchmark's helper running under another environment (autofaiss's,
with numpy < 2) can use it too.
"""

from __future__ import annotations

import threading


def status(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (``VmRSS`` now, ``VmHWM`` peak, ``RssAnon``), 0 where unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peak() -> bool:
    """Reset the peak-RSS mark ``VmHWM`` to the current RSS (``clear_refs`` 5, Linux >= 4.0);
    False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return status("VmHWM") > 0


class Sampled:
    """The peak of a ``/proc/self/status`` figure (KiB) while the block runs, sampled every 10 ms
    in a thread (FAISS and numpy release the GIL, so it keeps sampling during their work)."""

    def __init__(self, field: str):
        self.field = field

    def __enter__(self) -> Sampled:
        self.start = self.peak = status(self.field)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, status(self.field))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status(self.field))
