"""The Beam job: image URIs -> read, hash, decode, preprocess -> RunInference -> shards.

Entry points: :func:`run` (argv, as on the command line; tests pass ``test_pipeline``) and
:func:`run_config` (a frozen :class:`PipelineConfig`). The job knows nothing of SQL or FAISS:
its whole output is a folder of shards (see :mod:`pipeline.shards`), failures included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import shards
from pipeline.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from pipeline.handler import OpenClipImageHandler
from pipeline.inputs import FileEntry, expand_inputs
from vistag.faults import crash_point
from vistag.models import ModelIdentity, build_transform

log = logging.getLogger(__name__)
DEFAULT_RUNNER = "FnApiRunner"
KNOWN_HASHES_FILE = "known-sha256.txt"
WORKLIST_FILE = "worklist.jsonl"


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the job needs, built once and passed whole.

    ``worklist`` is a JSON-lines file of files to embed (see :func:`write_worklist`), read by
    the job itself so that a million-file run does not ship its list inside the job graph.
    """

    worklist: str
    total: int
    output: str
    model: dict[str, Any]
    batch_size: int = 32
    shard_size: int = 4096
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str | None = None
    known_hashes_file: str | None = None
    progress: bool = False
    beam_args: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ImageKey:
    """What the pipeline learns about an image before embedding it (a RunInference key)."""

    uri: str
    sha256: str
    size: int
    mtime: float
    width: int
    height: int

    def row(self, row: int) -> dict[str, Any]:
        return {
            "uri": self.uri, "sha256": self.sha256, "size": self.size, "mtime": self.mtime,
            "width": self.width, "height": self.height, "row": row,
        }  # fmt: skip


def write_worklist(folder: str, entries: Sequence[FileEntry]) -> str:
    """Write ``entries`` as ``folder/worklist.jsonl`` (one JSON object per line); returns its path."""
    from apache_beam.io.filesystems import FileSystems

    if not FileSystems.exists(folder):
        FileSystems.mkdirs(folder)
    path = FileSystems.join(folder, WORKLIST_FILE)
    lines = "".join(json.dumps([e.uri, e.size, e.mtime]) + "\n" for e in entries)
    with FileSystems.create(path) as fh:
        fh.write(lines.encode())
    return path


def parse_worklist_line(line: str) -> FileEntry:
    uri, size, mtime = json.loads(line)
    return FileEntry(uri, int(size), float(mtime))


def _failure(uri: str, stage: str, reason: str) -> dict[str, str]:
    return {"uri": uri, "stage": stage, "reason": reason[:500]}


class ReadDecodeFn(beam.DoFn):
    """Read bytes, hash them, decode and preprocess; bad inputs go to the ``failed`` output."""

    FAILED = "failed"
    KNOWN = "known"

    def __init__(self, config: PipelineConfig):
        self._model = config.model
        self._max_pixels = config.max_pixels
        self._known_file = config.known_hashes_file
        self._known: frozenset[str] = frozenset()
        self._transform = None

    def setup(self) -> None:
        identity = ModelIdentity.from_dict(self._model)
        self._transform = build_transform(identity)
        size = identity.preprocess.get("size", 224)
        self._draft = int(size if isinstance(size, int) else max(size))
        self._known = _load_known(self._known_file)

    def process(self, entry: FileEntry) -> Iterable[Any]:
        from apache_beam.io.filesystems import FileSystems

        try:
            with FileSystems.open(entry.uri, compression_type="uncompressed") as fh:
                data = fh.read()
        except Exception as err:  # any filesystem's error: vanished, permission, I/O
            yield beam.pvalue.TaggedOutput(self.FAILED, _failure(entry.uri, "read", _reason(err)))
            return
        sha = hashlib.sha256(data).hexdigest()
        if sha in self._known:
            key = ImageKey(entry.uri, sha, len(data), entry.mtime, 0, 0)
            yield beam.pvalue.TaggedOutput(self.KNOWN, key.row(-1))
            return
        try:
            decoded = decode_image(data, max_pixels=self._max_pixels, draft_size=self._draft)
            tensor = self._transform(decoded.image)
        except DecodeError as err:
            yield beam.pvalue.TaggedOutput(self.FAILED, _failure(entry.uri, "decode", err.reason))
            return
        except Exception as err:  # a bad file must never stop the run
            yield beam.pvalue.TaggedOutput(self.FAILED, _failure(entry.uri, "preprocess", _reason(err)))
            return
        yield ImageKey(entry.uri, sha, len(data), entry.mtime, decoded.width, decoded.height), tensor


def _reason(err: Exception) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}"


def _load_known(path: str | None) -> frozenset[str]:
    if not path:
        return frozenset()
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return frozenset(line.strip() for line in fh.read().decode().splitlines() if line.strip())


class WriteShardsFn(beam.DoFn):
    """Buffer rows and write them as shards of ``shard_size`` images.

    Shards are written as a side effect (also from ``finish_bundle``) and nothing is emitted, so
    no runner's handling of ``finish_bundle`` output can lose rows; the indexer lists the folder.
    """

    def __init__(self, config: PipelineConfig):
        self._output = config.output
        self._model = config.model
        self._shard_size = config.shard_size
        self._progress = config.progress
        self._total = config.total
        self._written = beam.metrics.Metrics.counter("vistag", "images_written")
        self._bar = None

    def setup(self) -> None:
        if self._progress:
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, desc="embedding", unit="img", dynamic_ncols=True)

    def start_bundle(self) -> None:
        self._meta: list[dict[str, Any]] = []
        self._vectors: list[np.ndarray] = []
        self._failures: list[dict[str, str]] = []

    def process(self, element: tuple[str, Any]) -> Iterable[None]:
        kind, payload = element
        if self._bar is not None:
            self._bar.update(1)
        if kind == "embedded":
            key, vector = payload
            self._meta.append(key.row(len(self._vectors)))
            self._vectors.append(np.asarray(vector, dtype=np.float32))
        elif kind == "known":
            self._meta.append(payload)
        else:
            self._failures.append(payload)
        if len(self._meta) + len(self._failures) >= self._shard_size:
            self._flush()
        return ()

    def finish_bundle(self) -> None:
        self._flush()

    def teardown(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _flush(self) -> None:
        count = len(self._meta) + len(self._failures)
        if not count:
            return
        dim = int(self._model["embed_dim"])
        matrix = np.stack(self._vectors) if self._vectors else np.zeros((0, dim), np.float32)
        shards.write_shard(self._output, self._meta, matrix, self._failures, self._model)
        crash_point("shard-written")
        self._written.inc(count)
        self.start_bundle()


def build(p: beam.Pipeline, config: PipelineConfig) -> None:
    """Add the job's transforms to ``p``."""
    handler = KeyedModelHandler(
        OpenClipImageHandler(
            ModelIdentity.from_dict(config.model), batch_size=config.batch_size, device=config.device
        )
    )
    work = (
        p
        | "ReadWorkList" >> beam.io.ReadFromText(config.worklist)
        | "ParseWorkList" >> beam.Map(parse_worklist_line)
    )
    decoded = work | "ReadDecode" >> beam.ParDo(ReadDecodeFn(config)).with_outputs(
        ReadDecodeFn.FAILED, ReadDecodeFn.KNOWN, main="decoded"
    )
    embedded = (
        decoded.decoded
        | "Embed" >> RunInference(handler)
        | "TagEmbedded" >> beam.Map(lambda kv: ("embedded", (kv[0], kv[1].inference)))
    )
    known = decoded[ReadDecodeFn.KNOWN] | "TagKnown" >> beam.Map(lambda row: ("known", row))
    failed = decoded[ReadDecodeFn.FAILED] | "TagFailed" >> beam.Map(lambda row: ("failed", row))
    _ = (embedded, known, failed) | "All" >> beam.Flatten() | "WriteShards" >> beam.ParDo(WriteShardsFn(config))


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options from ``beam_args``; the in-process runner (no download) unless one is named."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append(f"--runner={DEFAULT_RUNNER}")
    return PipelineOptions(args)


def run_config(config: PipelineConfig, test_pipeline: beam.Pipeline | None = None) -> list[str]:
    """Run the job; returns the names of the shards now in ``config.output``."""
    if test_pipeline is not None:
        build(test_pipeline, config)
        test_pipeline.run().wait_until_finish()
    else:
        with beam.Pipeline(options=pipeline_options(config.beam_args)) as p:
            build(p, config)
    return shards.list_shards(config.output)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    ap.add_argument("--inputs", nargs="+", required=True, help="folders, globs, manifests or image files")
    ap.add_argument("--output", required=True, help="shard folder (local or any Beam filesystem)")
    ap.add_argument("--model", default=None, help="OpenCLIP model spec")
    ap.add_argument("--pretrained", default=None, help="pretrained tag, checkpoint path or 'random'")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=4096)
    ap.add_argument("--device", default=None)
    return ap


def run(argv: Sequence[str] | None = None, test_pipeline: beam.Pipeline | None = None) -> list[str]:
    """Command-line entry point; unknown arguments are Beam pipeline options (``--runner`` ...)."""
    from vistag.models import load_model, parse_model_spec

    args, beam_args = _parser().parse_known_args(argv)
    identity = load_model(parse_model_spec(args.model, args.pretrained), "cpu").identity
    entries = expand_inputs(args.inputs).entries
    config = PipelineConfig(
        worklist=write_worklist(args.output, entries),
        total=len(entries),
        output=args.output,
        model=identity.to_dict(),
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        device=args.device,
        beam_args=tuple(beam_args),
    )
    return run_config(config, test_pipeline)
