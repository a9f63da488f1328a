"""The ``vistag`` command: parses arguments, calls :class:`vistag.api.Archive`, formats results.

Library errors arrive as typed exceptions and leave as one line on stderr with a non-zero code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from vistag import cli_serve
from vistag.errors import InputError, VistagError

COMMANDS = (
    "index", "search", "similar", "tag", "untag", "eval", "explain", "export", "status", "runs", "failures", "serve",
    "check",
)  # fmt: skip
# what a terminal would act on: C0 and C1 controls (escape sequences), DEL, bidi overrides, lone surrogates
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: object) -> str:
    """``text`` for a terminal: control characters shown as escapes (``\\x1b``), never sent raw (a
    file name could otherwise retitle the terminal or overwrite lines). ``--json`` output is JSON's."""
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], str(text))


class Parser(argparse.ArgumentParser):
    """vistag's argument parser: an option is written in full (``--dry`` is not ``--dry-run``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _common(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--home", help="home directory of the archive (default: $VISTAG_HOME or ~/.vistag)")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (default: SQLite file in the home)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="vistag", description="Index, search and tag an image archive. An argument @FILE is replaced by "
        "the lines of FILE (e.g. Beam runner options kept in infra/beam/).", fromfile_prefix_chars="@",
    )  # fmt: skip
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("index", help="embed images into the catalog and publish a new index version",
                       description="Embed every image under PATHs (folders, globs, image files, manifest "
                       "files of URIs) and publish a new index version. Unknown --options are passed "
                       "to Apache Beam (e.g. --runner, --direct_num_workers).")  # fmt: skip
    p.add_argument("paths", nargs="+", metavar="PATH", help="folder, glob, image file or manifest (.txt/.lst)")
    p.add_argument("--model", help="OpenCLIP model: ViT-B-32 (default), hf-hub:org/name, local-dir:/path")
    p.add_argument("--pretrained", help="pretrained tag (default for ViT-B-32: laion2b_s34b_b79k), checkpoint path, or 'random'")
    p.add_argument("--batch-size", type=int, help="images per model forward (default: 256 on a GPU, 32 on CPU)")
    p.add_argument("--shard-size", type=int, default=4096, help="images per embedding shard (default 4096)")
    p.add_argument("--chunk-size", type=int, default=256, help="images per unit of work, decoded, embedded and "
                   "written as one shard by one worker (default 256)")
    p.add_argument("--decode-processes", type=int, metavar="N",
                   help="decode images in a pool of N processes inside the in-process runner (default: one per "
                   "CPU core when it feeds a GPU, else 0: decode in the worker thread)")
    p.add_argument("--index-type", help="FAISS index_factory string overriding the automatic choice (e.g. Flat, HNSW32,Flat)")
    p.add_argument("--memory-budget", metavar="SIZE", type=parse_size,
                   help="memory the index may take, e.g. 512M or 8G (default: no limit); decides between exact, "
                   "8-bit and product-quantised codes")
    p.add_argument("--latency-target", metavar="MS", type=float,
                   help="target for one query's search in milliseconds: exact search is kept while its latency, "
                   "estimated on this machine, stays within it (default: exact up to 100,000 vectors)")
    p.add_argument("--index-storage", choices=("auto", "memory", "ondisk"), default="auto",
                   help="where the index's inverted lists live: auto (default: on disk when the index exceeds the "
                   "memory budget), memory, or ondisk (IVF only: built in blocks, merged into index.ivfdata)")
    p.add_argument("--max-pixels", type=int, help="largest image accepted, in pixels (default 128000000)")
    p.add_argument("--shards", metavar="URI", help="where embedding shards go (default HOME/shards); a shared "
                   "filesystem or bucket such as gs://bucket/shards when a remote runner's workers write them")
    p.add_argument("--runner", help="Beam runner (default: in-process FnApiRunner; DaskRunner, DataflowRunner, FlinkRunner...)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (new, changed, deleted...) and stop")
    p.add_argument("--change-db", action="store_true", help="move this home to the catalog database given by "
                   "--db or $VISTAG_DB (a home keeps one catalog; embeddings are taken from its shards)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)

    p = sub.add_parser("search", help="text-to-image search", description="Find the images best matching TEXT.")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    _common(p)

    p = sub.add_parser("similar", help="image-to-image search",
                       description="Find images similar to an indexed image (id or path) or any image file.")  # fmt: skip
    p.add_argument("image", metavar="PATH_OR_ID")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    _common(p)

    p = sub.add_parser("tag", help="zero-shot tag every indexed image",
                       description="Score every indexed image against LABELS; store all scores (or each "
                       "image's --store-top best) under a new tag run and print each image's best labels.")  # fmt: skip
    p.add_argument("--labels", required=True, metavar="FILE_OR_LIST",
                   help="'cat,dog,car', a file with one label per line, or a YAML/JSON vocabulary")
    p.add_argument("--templates", default="short", metavar="NAME_OR_FILE",
                   help="prompt templates: short (default, 6), imagenet (CLIP's 80), none, or a file with one per line")
    p.add_argument("--top", type=int, default=3, help="labels printed per image (default 3)")
    p.add_argument("--method", choices=("zeroshot", "zlap"), default="zeroshot",
                   help="zeroshot (cosine to label prompts) or zlap (label propagation over the kNN graph)")
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                   help="print only labels whose calibrated confidence is at least P (0..1; all are stored)")
    p.add_argument("--store-top", type=int, metavar="N",
                   help="store only each image's N best labels by raw score (default: every label)")
    p.add_argument("--store-all", action="store_true",
                   help="store every label even when that is over 100 million tag rows (refused otherwise)")
    _common(p)

    p.add_argument("--thresholds", metavar="FILE", help="per-label confidence thresholds (JSON, e.g. from eval --save-thresholds)")

    p = sub.add_parser("untag", help="delete a tag run", description="Delete tag runs: their tags and saved "
                       "state; their label sets are no longer applied to newly indexed images.")  # fmt: skip
    p.add_argument("run_ids", nargs="+", type=int, metavar="RUN_ID", help="tag run id (see `vistag runs`)")
    _common(p)

    p = sub.add_parser("eval", help="evaluate zero-shot and ZLaP tagging against ground truth",
                       description="Compare tagging methods on a CSV of uri,label rows: top-1 accuracy, per-label "
                       "precision and recall at the confidence threshold, and mAP.")  # fmt: skip
    p.add_argument("--truth", required=True, metavar="CSV", help="ground truth: uri,label rows")
    p.add_argument("--labels", metavar="FILE_OR_LIST", help="label set (default: the labels in the truth file)")
    p.add_argument("--methods", default="zeroshot,zlap", help="comma-separated methods (default zeroshot,zlap)")
    p.add_argument("--min-confidence", type=float, default=0.5, metavar="P", help="confidence threshold (default 0.5)")
    p.add_argument("--templates", default="short", metavar="NAME_OR_FILE", help="prompt templates, as for tag")
    p.add_argument("--fit-thresholds", action="store_true", help="also fit per-label F1-best thresholds on the truth")
    p.add_argument("--save-thresholds", metavar="FILE", help="write the fitted thresholds of the first method as JSON")
    _common(p)

    p = sub.add_parser("explain", help="an image's labels with raw score, confidence and method",
                       description="Show an indexed image's best labels in every label set applied.")  # fmt: skip
    p.add_argument("image", metavar="PATH_OR_ID")
    p.add_argument("--top", type=int, default=5, help="labels per label set (default 5)")
    _common(p)

    p = sub.add_parser("export", help="tags and metadata of every image", description="Export every image "
                       "with its metadata and the tags of the latest tag run.")  # fmt: skip
    p.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default json)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    _common(p, json_flag=False)

    p = sub.add_parser("status", help="counts, model and index version", description="Show counts, model identity, index version and type.")
    _common(p)
    p = sub.add_parser("runs", help="index and tag runs, newest first", description="List runs, newest first.")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many runs (default 20)")
    _common(p)
    p = sub.add_parser("failures", help="images that could not be indexed, with stage and reason",
                       description="List recorded failures, newest first.")  # fmt: skip
    p.add_argument("-n", "--limit", type=int, default=50, help="how many failures (default 50)")
    _common(p)
    p = sub.add_parser("check", help="verify index versions, shards and catalog; say how to repair",
                       description="Hash every file of the published and previous index versions and "
                       "every embedding shard the catalog points into, compare the catalog with the index, "
                       "and print what is damaged and how to repair it (exit 5 when anything is).")  # fmt: skip
    _common(p)
    cli_serve.add_parser(sub)
    return ap


def parse_size(text: str) -> int:
    """'512M', '8G', '1.5G', '1000000' -> bytes."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 8G)") from None


def _version() -> str:
    from vistag import __version__

    return f"vistag {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "index":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # Beam and its optional clients log warnings at import that are noise to a CLI user.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.ERROR)  # Dask logs INFO on its own
    from vistag.api import Archive

    try:
        with Archive(args.home, args.db, args.device, change_db=getattr(args, "change_db", False)) as archive:
            return HANDLERS[args.command](archive, args, extra)
    except VistagError as err:
        return _fail(str(err), err.exit_code)
    except _database_errors() as err:
        return _fail(f"catalog database: {str(getattr(err, 'orig', None) or err).splitlines()[0]}", 5)
    except OSError as err:  # disk full, permissions, I/O errors while writing state
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        return _fail(f"{err.strerror or err}{where}", 5)
    except KeyboardInterrupt:
        print("vistag: interrupted", file=sys.stderr)
        return 130


def _fail(message: str, code: int) -> int:
    print(f"vistag: error: {printable(message)}", file=sys.stderr)
    return code


def _database_errors() -> type[Exception]:
    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, default=str))


def beam_args(args: argparse.Namespace, extra: Sequence[str]) -> tuple[str, ...]:
    """The Beam pipeline options of an ``index`` command line: the options vistag does not know,
    each of which must be one of Beam's (a typo is an error naming the nearest option), plus --runner."""
    from pipeline.runners import check_beam_args

    own = [o for action in build_parser()._subparsers._group_actions[0].choices["index"]._actions  # noqa: SLF001
           for o in action.option_strings]  # fmt: skip
    return check_beam_args(extra, own) + ((f"--runner={args.runner}",) if args.runner else ())


def cmd_index(archive: Any, args: argparse.Namespace, extra: list[str]) -> int:
    options: dict[str, Any] = {"model": args.model, "pretrained": args.pretrained, "batch_size": args.batch_size,
               "shard_size": args.shard_size, "chunk_size": args.chunk_size,
               "decode_processes": args.decode_processes, "index_type": args.index_type, "shards_root": args.shards,
               "memory_budget": args.memory_budget,
               "latency_target_ms": args.latency_target, "index_storage": args.index_storage,
               "dry_run": args.dry_run,
               "progress": not args.no_progress and not args.json and sys.stderr.isatty(),
               "beam_args": beam_args(args, extra)}  # fmt: skip
    if args.max_pixels:
        options["max_pixels"] = args.max_pixels
    for name in ("batch_size", "chunk_size", "shard_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    if args.decode_processes is not None and args.decode_processes < 0:
        raise InputError("--decode-processes must be 0 or more")
    start = time.perf_counter()
    result = archive.index(args.paths, **options)
    if args.json:
        _print_json(result.to_dict() | {"seconds": round(time.perf_counter() - start, 3)})
    elif args.dry_run:
        if result.model_change:
            print(result.model_change)
        for line in result.plan.describe().splitlines():
            print(printable(line))
        print(f"index: {result.index_plan}")
    else:
        if result.model_change:
            print(result.model_change)
        c = result.plan.counts()
        print(f"{c['listed']} listed: {result.embedded} embedded, {result.reused} reused by content, "
              f"{c['unchanged']} unchanged, {result.failed} failed, {result.deleted} deleted "
              f"({time.perf_counter() - start:.1f}s)")  # fmt: skip
        if result.index_version:
            print(f"published index {result.index_version} with {result.index_count} vectors")
        if result.tag_runs:
            print(f"tagged new images for earlier tag runs {', '.join(map(str, result.tag_runs))}")
        if result.failed:
            print("see `vistag failures` for the reasons")
    return 0


def _print_hits(hits: list[Any], as_json: bool) -> None:
    if as_json:
        _print_json([h.to_dict() for h in hits])
        return
    for hit in hits:
        print(f"{hit.score:8.4f}  {hit.id:>8}  {printable(hit.uri)}")


def cmd_search(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    _print_hits(archive.search(args.text, args.k), args.json)
    return 0


def cmd_similar(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    _print_hits(archive.similar(args.image, args.k), args.json)
    return 0


def cmd_tag(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    from query.evaluate import load_thresholds

    thresholds = load_thresholds(args.thresholds) if args.thresholds else None
    result = archive.tag(args.labels, top=args.top, method=args.method, min_confidence=args.min_confidence,
                         templates=args.templates, thresholds=thresholds, store_top=args.store_top,
                         store_all=args.store_all)
    if args.json:
        _print_json(result.top)
        return 0
    by_uri: dict[str, list[str]] = {}
    for row in result.top:
        by_uri.setdefault(row["uri"], []).append(f"{row['label']} ({row['confidence']:.2f})")
    for uri, labels in by_uri.items():
        print(printable(f"{uri}: {', '.join(labels)}"))
    stored = f"{len(result.labels)} labels" if args.store_top is None else f"best {args.store_top} of {len(result.labels)} labels"
    print(f"tag run {result.run_id}: {result.images} images x {stored} stored", file=sys.stderr)
    return 0


def cmd_eval(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    fit = args.fit_thresholds or bool(args.save_thresholds)
    report = archive.evaluate(args.truth, args.labels, methods=methods, min_confidence=args.min_confidence,
                              fit_thresholds=fit, templates=args.templates)  # fmt: skip
    if args.save_thresholds:
        first = report["methods"][methods[0]]["fitted"]["labels"]
        _write_atomic(args.save_thresholds, json.dumps({k: v["threshold"] for k, v in first.items()}, indent=1))
    if args.json:
        _print_json(report)
        return 0
    results = report["methods"]
    print(f"{'':24}" + "".join(f"{m:>22}" for m in methods))
    print(f"{'top-1 accuracy':24}" + "".join(f"{results[m]['top1']:>22.3f}" for m in methods))
    print(f"{'mAP':24}" + "".join(f"{results[m]['map']:>22.3f}" for m in methods))
    print(f"{'label (P / R / AP)':24}" + "".join(f"{'at ' + str(args.min_confidence):>22}" for m in methods))
    for label in report["labels"]:
        cells = [results[m]["labels"][label] for m in methods]
        print(f"{printable(label)[:24]:24}" + "".join(f"{c['precision']:>8.2f}{c['recall']:>7.2f}{c['ap']:>7.2f}" for c in cells))
    return 0


def cmd_explain(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    rows = archive.explain(args.image, args.top)
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no tags for this image yet (run `vistag tag`)")
    for r in rows:
        print(printable(f"run {r['run_id']:>4}  {r['method']:<15}  {r['label']:<30}  confidence "
                        f"{r['confidence'] if r['confidence'] is not None else float('nan'):.3f}  "
                        f"(score {r['score']:.5g})"))  # fmt: skip
    return 0


def cmd_untag(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    deleted = [archive.delete_tag_run(run_id) for run_id in args.run_ids]
    if args.json:
        _print_json(deleted)
        return 0
    for d in deleted:
        others = d["still_applied"]
        after = (f"run {', '.join(map(str, others))} with the same labels is still applied to new images"
                 if others else "its labels are no longer applied to new images")  # fmt: skip
        print(f"deleted tag run {d['run_id']} ({d['tags']} tags); {after}")
    return 0


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.replace(tmp, path)


def cmd_export(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    text = archive.export(args.format)
    if args.output:
        _write_atomic(args.output, text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def cmd_status(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    status = archive.status()
    if args.json:
        _print_json(status)
        return 0
    print(printable(f"home:     {status['home']}"))
    print(printable(f"database: {status['database']}"))
    if status.get("problem"):  # counts beside an index they do not describe would mislead
        print(printable(f"problem:  {status['problem']}"))
    else:
        counts = f"{status['indexed']} indexed, {status['failed']} failed, {status['deleted']} deleted"
        print(f"images:   {counts}")
    if status["model"]:
        m, i = status["model"], status["index"]
        print(f"model:    {m['model']} ({m['pretrained'] or 'weights in model folder'}), {m['embed_dim']}-d, key {m['key']}")
        print(f"index:    {i['version']} ({i['type']}, {i['count']} vectors)")
    elif not status.get("problem"):
        print("index:    none published yet (run `vistag index PATH`)")
    return 0


def cmd_check(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    report = archive.check()
    if args.json:
        _print_json(report)
        return 0 if report["ok"] else 5
    c = report["checked"]
    print(f"checked {c['versions']} index versions and {c['shards']} shards ({c['files']} files, "
          f"{c['bytes'] / 2**20:.1f} MiB hashed) in {report['seconds']:.1f}s")  # fmt: skip
    for d in report["damaged"]:
        print(printable(f"damaged {d['kind']}: {d['path']}: {d['problem']}"))
        print(printable(f"  repair: {d['repair']}"))
    for note in report["notes"]:
        print(printable(f"note: {note}"))
    print("ok: nothing damaged" if report["ok"] else f"{len(report['damaged'])} damaged")
    return 0 if report["ok"] else 5


def _print_rows(rows: list[dict[str, Any]], as_json: bool, line: Any) -> int:
    if as_json:
        _print_json(rows)
    else:
        for row in rows:
            print(line(row))
    return 0


def _run_line(r: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
    return (f"{r['id']:>5}  {r['kind']:<5}  {r['status']:<11}  {when}  embedded {r['embedded']}, "
            f"failed {r['failed']}, deleted {r['deleted']}")  # fmt: skip


def cmd_runs(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    return _print_rows(archive.runs(args.limit), args.json, _run_line)


def cmd_failures(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    return _print_rows(archive.failures(args.limit), args.json,
                       lambda r: printable(f"{r['stage']:<10}  {r['uri']}: {r['reason']}"))  # fmt: skip


HANDLERS = {
    "index": cmd_index, "search": cmd_search, "similar": cmd_similar, "tag": cmd_tag, "untag": cmd_untag, "eval": cmd_eval,
    "explain": cmd_explain, "export": cmd_export,
    "status": cmd_status, "runs": cmd_runs, "failures": cmd_failures, "serve": cli_serve.cmd_serve,
    "check": cmd_check,
}  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
