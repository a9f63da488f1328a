"""A progress bar that watches the shard folder, so it works the same on every runner.

Workers report nothing back to the driver while a job runs on Dask, Dataflow or Flink, but
every chunk ends in a shard whose manifest counts its images: the driver polls the folder.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from core import uris
from pipeline import shards


def _poll(folder: str, prefix: str, seen: set[str]) -> int:
    """Images (and failures) in shards named ``prefix*`` not in ``seen``; adds them to ``seen``."""
    done = 0
    for name in shards.list_shards(folder):
        if name.startswith(prefix) and name not in seen:
            with contextlib.suppress(Exception):  # a shard being replaced: counted next time
                manifest = shards.read_manifest(folder, name)
                done += int(manifest["images"]) + int(manifest["failures"])
                seen.add(name)
    return done


@contextlib.contextmanager
def shard_progress(
    folder: str, prefix: str, total: int, enabled: bool, every_s: float | None = None
) -> Iterator[None]:
    """Show a tqdm bar of images in shards ``prefix*`` of ``folder`` while the body runs.

    The folder is listed every ``every_s`` seconds (default 0.5 locally, 5 on remote filesystems).
    """
    if not enabled:
        yield
        return
    from tqdm import tqdm

    every_s = every_s or (5.0 if uris.is_remote(folder) else 0.5)
    stop = threading.Event()
    seen: set[str] = set()
    bar = tqdm(total=total, desc="embedding", unit="img", dynamic_ncols=True)

    def watch() -> None:
        while not stop.wait(every_s):
            bar.update(_poll(folder, prefix, seen))

    thread = threading.Thread(target=watch, name="vistag-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.update(_poll(folder, prefix, seen))
        bar.close()
