"""Runner selection: Beam options for the job, and a local Dask cluster when none is given.

``--runner`` takes Beam's names plus ``DaskRunner`` / ``dask`` (Beam itself only knows the Dask
runner by its full class path). On Dask, Beam's ``--dask_client_address`` (or
``--dask_scheduler_file``) names the cluster; without one, :func:`dask_cluster` starts a local
``distributed.LocalCluster`` of ``--dask_local_workers`` single-threaded worker processes for the
run and stops it afterwards. Each chunk becomes its own Dask partition (``--dask_partition_size=1``
unless given), so chunks spread over the workers and a lost worker costs only its chunks.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from apache_beam.options.pipeline_options import PipelineOptions

from core.errors import InputError

DEFAULT_RUNNER = "FnApiRunner"
DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"
_ALIASES = {"dask": DASK_RUNNER, "daskrunner": DASK_RUNNER}
_DASK_CLUSTER_OPTIONS = ("--dask_client_address", "--dask_scheduler_file")
_DASK_PARTITION_OPTIONS = ("--dask_partition_size", "--dask_npartitions")


class LocalDaskOptions(PipelineOptions):
    """vistag's own Beam option for a run on a local Dask cluster."""

    @classmethod
    def _add_argparse_args(cls, parser: Any) -> None:
        parser.add_argument(
            "--dask_local_workers",
            type=int,
            default=None,
            help="worker processes of the local Dask cluster started when the Dask runner is "
            "chosen without --dask_client_address (default: one per CPU core)",
        )


# Beam options that would make an index run quietly wrong
REFUSED_OPTIONS = {"--dry_run": "it skips the embedding and the run would record nothing; use --dry-run"}


class _Refused(Exception):
    """argparse's complaint about a Beam option's value (raised instead of exiting)."""


def beam_parser() -> argparse.ArgumentParser:
    """An argument parser of every Beam pipeline option registered in this process, as Beam's own
    ``PipelineOptions.get_all_options`` builds it (plus Dask's and vistag's own)."""
    with contextlib.suppress(ImportError):  # Dask's options live with its runner (the dask extra)
        import apache_beam.runners.dask.dask_runner  # noqa: F401

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise _Refused(message)

    parser = Parser(allow_abbrev=False, add_help=False)
    classes: dict[str, type[PipelineOptions]] = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 - how Beam itself collects them
    return parser


def check_beam_args(beam_args: Sequence[str], own: Sequence[str] = ()) -> tuple[str, ...]:
    """``beam_args`` when every one is a Beam pipeline option (``--name=value``, ``--name value`` or
    a flag) with a value Beam accepts; else :class:`InputError` naming the first unknown option and
    the nearest known one (among Beam's and ``own``, the caller's option names)."""
    if not beam_args:
        return tuple(beam_args)
    refused = [a for a in beam_args if a.split("=", 1)[0] in REFUSED_OPTIONS]
    if refused:
        name = refused[0].split("=", 1)[0]
        raise InputError(f"Beam option {name} is not for vistag: {REFUSED_OPTIONS[name]}")
    parser = beam_parser()
    try:
        _, unknown = parser.parse_known_args(list(beam_args))
    except _Refused as err:
        raise InputError(f"Beam option: {err}") from None
    if not unknown:
        return tuple(beam_args)
    bad = unknown[0]
    if not bad.startswith("-"):
        raise InputError(f"unexpected argument {bad!r} (options look like --name=value)")
    name = bad.split("=", 1)[0]
    beam = [o for action in parser._actions for o in action.option_strings]  # noqa: SLF001
    near = difflib.get_close_matches(name, own, n=1, cutoff=0.75) or difflib.get_close_matches(
        name, beam, n=1
    )
    hint = (
        f"; did you mean {near[0]}?" if near else " (see `vistag index --help` and Beam's pipeline options)"
    )
    raise InputError(f"unknown option {name}{hint}")


def _option_value(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in ``args`` (the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        elif arg == name and i + 1 < len(args):
            value = args[i + 1]
    return value


def _has_option(args: Sequence[str], names: Sequence[str]) -> bool:
    return any(_option_value(args, name) is not None for name in names)


def normalize_args(beam_args: Sequence[str]) -> list[str]:
    """``beam_args`` with one ``--runner=`` (the default when none is named, Dask aliases resolved)
    and, on Dask, one chunk per partition unless a partitioning is given."""
    runner = _option_value(beam_args, "--runner") or DEFAULT_RUNNER
    runner = _ALIASES.get(runner.lower(), runner)
    args: list[str] = []
    skip = False
    for i, arg in enumerate(beam_args):
        if skip:
            skip = False
            continue
        if arg == "--runner":
            skip = i + 1 < len(beam_args)
            continue
        if not arg.startswith("--runner="):
            args.append(arg)
    args.append(f"--runner={runner}")
    if runner == DASK_RUNNER and not _has_option(args, _DASK_PARTITION_OPTIONS):
        args.append("--dask_partition_size=1")
    return args


def is_dask(beam_args: Sequence[str]) -> bool:
    """Whether ``beam_args`` choose Beam's Dask runner."""
    return _option_value(normalize_args(beam_args), "--runner") == DASK_RUNNER


def is_in_process(beam_args: Sequence[str]) -> bool:
    """Whether ``beam_args`` choose the in-process runner (the default)."""
    return _option_value(normalize_args(beam_args), "--runner") == DEFAULT_RUNNER


def feeds_local_gpu(beam_args: Sequence[str], device: str) -> bool:
    """Whether the in-process runner feeds a GPU with worker threads left to vistag's choice."""
    return (
        str(device).startswith("cuda")
        and is_in_process(beam_args)
        and _option_value(beam_args, "--direct_num_workers") is None
    )


def gpu_defaults(beam_args: Sequence[str], device: str, chunks: int, threads: int | None = None) -> list[str]:
    """``beam_args`` plus, for the in-process runner feeding a GPU, worker threads.

    One in-process worker decodes a chunk, then embeds it: the GPU would wait for every JPEG.
    With ``direct_num_workers`` threads (``threads``, else one per CPU core; at most one per
    chunk) in ``multi_threading`` mode, the threads share the one model copy (RunInference's
    shared handle) and take turns on the GPU (see :mod:`pipeline.handler`) while the others
    read and decode, themselves or through a decode pool (see :mod:`pipeline.decode_pool`).
    Nothing changes when the runner is not the in-process one, when not on a GPU, or when
    ``--direct_num_workers`` is given.
    """
    args = normalize_args(beam_args)
    if not feeds_local_gpu(args, device):
        return args
    threads = max(1, min(threads or os.cpu_count() or 1, chunks))
    return [*args, f"--direct_num_workers={threads}", "--direct_running_mode=multi_threading"]


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options from ``beam_args``; the in-process runner (no download) unless one is named."""
    return PipelineOptions(normalize_args(beam_args))


@contextlib.contextmanager
def local_cluster(workers: int | None = None, threads_per_worker: int = 1) -> Iterator[Any]:
    """A ``distributed.LocalCluster`` of ``workers`` processes on 127.0.0.1, closed on exit."""
    from distributed import LocalCluster

    n = workers or os.cpu_count() or 1
    with warnings.catch_warnings():  # a second cluster's status page takes a free port: fine
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = LocalCluster(
            n_workers=n,
            processes=True,
            threads_per_worker=threads_per_worker,
            host="127.0.0.1",
            dashboard_address=None,
        )
    try:
        yield cluster
    finally:
        cluster.close()


@contextlib.contextmanager
def dask_cluster(beam_args: Sequence[str], workers: int | None = None) -> Iterator[list[str]]:
    """Yield the run's Beam args; on Dask without a cluster address, start a local cluster for it.

    ``workers`` (else ``--dask_local_workers``, else one per CPU core) sets its worker processes.
    Other runners, and Dask with an address, get their args back unchanged (normalised).
    """
    args = normalize_args(beam_args)
    if not is_dask(args) or _has_option(args, _DASK_CLUSTER_OPTIONS):
        yield args
        return
    workers = workers or PipelineOptions(args).view_as(LocalDaskOptions).dask_local_workers
    with local_cluster(workers) as cluster:
        yield [*args, f"--dask_client_address={cluster.scheduler_address}"]


def close_result(result: Any) -> None:
    """Close the Dask client a Dask runner's result holds (Beam never does); no-op otherwise."""
    client = getattr(result, "client", None)
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()
