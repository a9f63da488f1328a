"""The ``vistag`` command line: every command's options (:func:`build_parser`). Parsing only:
nothing heavy is imported here."""

from __future__ import annotations

import argparse
from typing import Any

from vistag.cli.parser_corrections import CORRECTION_COMMANDS, add_corrections_parsers

ENV_WRITE_TOKEN = "VISTAG_WRITE_TOKEN"
COMMANDS = (
    "index",
    "search",
    "similar",
    "tag",
    "untag",
    "eval",
    "explain",
    "export",
    "write-xmp",
    "status",
    "runs",
    "failures",
    "serve",
    "check",
    "duplicates",
    *CORRECTION_COMMANDS,
)


class Parser(argparse.ArgumentParser):
    """vistag's argument parser: an option is written in full (``--dry`` is not ``--dry-run``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def common_options(p: argparse.ArgumentParser, json_flag: bool = True) -> None:
    p.add_argument("--home", help="home directory of the archive (default: $VISTAG_HOME or ~/.vistag)")
    p.add_argument("--db", metavar="URL", help="SQLAlchemy database URL (default: SQLite file in the home)")
    p.add_argument("--device", help="torch device: cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument(
        "--engine",
        help="what runs the model on a CPU: auto (OpenVINO when installed), torch or openvino "
        "(default: $VISTAG_ENGINE, else auto)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since",
        metavar="DATE",
        help="taken on or after DATE (ISO 8601 date or time; EXIF date, else mtime)",
    )
    p.add_argument("--until", metavar="DATE", help="taken on or before DATE (a date alone: to its end)")
    p.add_argument("--path", metavar="PREFIX", help="under this folder or path prefix")
    p.add_argument("--tag", metavar="LABEL", help="LABEL among the image's 3 best tags of the latest tag run")
    p.add_argument("--camera", metavar="TEXT", help="camera make and model contain TEXT (any case)")
    p.add_argument("--near", metavar="LAT,LON,KM", help="GPS position within KM km of LAT,LON (degrees)")
    p.add_argument("--keyword", metavar="WORD", help="WORD among the keywords in the file or its XMP sidecar")


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="vistag",
        description="Index, search and tag an image archive. An argument @FILE is replaced by "
        "the lines of FILE (e.g. Beam runner options kept in infra/beam/).",
        fromfile_prefix_chars="@",
    )
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser(
        "index",
        help="embed images into the catalog and publish a new index version",
        description="Embed every image under PATHs (folders, globs, image files, manifest "
        "files of URIs) and publish a new index version. Other --options must be Apache Beam "
        "pipeline options (e.g. --direct_num_workers); a misspelt option is an error.",
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="folder, glob, image file or manifest (.txt/.lst)"
    )
    p.add_argument("--model", help="OpenCLIP model: ViT-B-32 (default), hf-hub:org/name, local-dir:/path")
    p.add_argument(
        "--pretrained",
        help="pretrained tag (default for ViT-B-32: laion2b_s34b_b79k), checkpoint path, or 'random'",
    )
    p.add_argument(
        "--batch-size", type=int, help="images per model forward (default: 256 on a GPU, 32 on CPU)"
    )
    p.add_argument("--shard-size", type=int, default=4096, help="images per embedding shard (default 4096)")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        help="images per unit of work, decoded, embedded and "
        "written as one shard by one worker (default 256)",
    )
    p.add_argument(
        "--decode-processes",
        type=int,
        metavar="N",
        help="decode images in a pool of N processes inside the in-process runner (default: one per "
        "CPU core when it feeds a GPU, else 0: decode in the worker thread)",
    )
    p.add_argument(
        "--gpu-decode",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode JPEGs in batches on the CUDA GPU that runs the model, other images on the CPU "
        "(default: on when the in-process runner feeds a local CUDA GPU)",
    )
    p.add_argument(
        "--index-type",
        help="FAISS index_factory string overriding the automatic choice (e.g. Flat, HNSW32,Flat)",
    )
    p.add_argument(
        "--memory-budget",
        metavar="SIZE",
        type=parse_size,
        help="memory the index may take, e.g. 512M or 8G (default: no limit); decides between exact, "
        "8-bit and product-quantised codes",
    )
    p.add_argument(
        "--latency-target",
        metavar="MS",
        type=float,
        help="target for one query's search in milliseconds: exact search is kept while its latency, "
        "estimated on this machine, stays within it (default: exact up to 100,000 vectors)",
    )
    p.add_argument(
        "--index-storage",
        choices=("auto", "memory", "ondisk"),
        default="auto",
        help="where the index's inverted lists live: auto (default: on disk when the index exceeds the "
        "memory budget), memory, or ondisk (IVF only: built in blocks, merged into index.ivfdata)",
    )
    p.add_argument("--max-pixels", type=int, help="largest image accepted, in pixels (default 128000000)")
    p.add_argument(
        "--shards",
        metavar="URI",
        help="where embedding shards go (default HOME/shards); a shared "
        "filesystem or bucket such as gs://bucket/shards when a remote runner's workers write them",
    )
    p.add_argument(
        "--runner",
        help="Beam runner (default: in-process FnApiRunner; DaskRunner, DataflowRunner, FlinkRunner...)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (new, changed, deleted...) and stop"
    )
    p.add_argument(
        "--refresh-metadata",
        action="store_true",
        help="read unchanged images the catalog does not describe yet (perceptual hash, date taken: "
        "indexed by an older vistag) again, without embedding them again",
    )
    p.add_argument(
        "--refresh-metadata-all", action="store_true", help="read every unchanged image's metadata again"
    )
    p.add_argument(
        "--change-db",
        action="store_true",
        help="move this home to the catalog database given by "
        "--db or $VISTAG_DB (a home keeps one catalog; embeddings are taken from its shards)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    common_options(p)

    p = sub.add_parser(
        "search", help="text-to-image search", description="Find the images best matching TEXT."
    )
    p.add_argument("text", metavar="TEXT")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    filter_options(p)
    common_options(p)

    p = sub.add_parser(
        "similar",
        help="image-to-image search",
        description="Find images similar to an indexed image (id or path) or any image file.",
    )
    p.add_argument("image", metavar="PATH_OR_ID")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    filter_options(p)
    common_options(p)

    p = sub.add_parser(
        "tag",
        help="zero-shot tag every indexed image",
        description="Score every indexed image against LABELS; store all scores (or each "
        "image's --store-top best) under a new tag run and print each image's best labels. Filters "
        "as for search keep the stored and printed tags to the images that pass them.",
    )
    p.add_argument(
        "--labels",
        required=True,
        metavar="FILE_OR_LIST",
        help="'cat,dog,car', a file with one label per line, or a YAML/JSON vocabulary",
    )
    p.add_argument(
        "--templates",
        default="short",
        metavar="NAME_OR_FILE",
        help="prompt templates: short (default, 6), imagenet (CLIP's 80), none, or a file with one per line",
    )
    p.add_argument("--top", type=int, default=3, help="labels printed per image (default 3)")
    p.add_argument(
        "--method",
        choices=("zeroshot", "zlap", "fewshot"),
        default="zeroshot",
        help="zeroshot (cosine to label prompts), zlap (label propagation over the kNN graph) or fewshot "
        "(zero-shot plus a cache of the images people confirmed or rejected)",
    )
    p.add_argument(
        "--no-corrections", action="store_true", help="ignore people's confirmed and rejected tags"
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        default=0.0,
        metavar="P",
        help="print only labels whose calibrated confidence is at least P (0..1; all are stored)",
    )
    p.add_argument(
        "--store-top",
        type=int,
        metavar="N",
        help="store only each image's N best labels by raw score (default: every label)",
    )
    p.add_argument(
        "--store-all",
        action="store_true",
        help="store every label even when that is over 100 million tag rows (refused otherwise)",
    )
    filter_options(p)
    common_options(p)

    p.add_argument(
        "--thresholds",
        metavar="FILE",
        help="per-label confidence thresholds (JSON, e.g. from eval --save-thresholds)",
    )

    p = sub.add_parser(
        "untag",
        help="delete a tag run",
        description="Delete tag runs: their tags and saved "
        "state; their label sets are no longer applied to newly indexed images.",
    )
    p.add_argument("run_ids", nargs="+", type=int, metavar="RUN_ID", help="tag run id (see `vistag runs`)")
    common_options(p)

    p = sub.add_parser(
        "eval",
        help="evaluate zero-shot and ZLaP tagging against ground truth",
        description="Compare tagging methods on a CSV of uri,label rows, or on the keywords the images "
        "carry: top-1 accuracy, per-label precision and recall at the confidence threshold, and mAP.",
    )
    p.add_argument(
        "--truth",
        required=True,
        metavar="CSV_OR_KEYWORDS",
        help="ground truth: a CSV of uri,label rows, or 'keywords': each image's labels are the labels "
        "among its keywords (images with none are left out)",
    )
    p.add_argument(
        "--labels",
        metavar="FILE_OR_LIST",
        help="label set (default: the labels in the truth file; required with --truth keywords)",
    )
    p.add_argument(
        "--methods", help="comma-separated methods (default zeroshot,zlap; with --shots also fewshot)"
    )
    p.add_argument(
        "--shots", metavar="LIST", help="simulate N confirmed truth images per label, e.g. 0,1,2,4,8"
    )
    p.add_argument(
        "--min-confidence", type=float, default=0.5, metavar="P", help="confidence threshold (default 0.5)"
    )
    p.add_argument(
        "--templates", default="short", metavar="NAME_OR_FILE", help="prompt templates, as for tag"
    )
    p.add_argument(
        "--fit-thresholds", action="store_true", help="also fit per-label F1-best thresholds on the truth"
    )
    p.add_argument(
        "--save-thresholds", metavar="FILE", help="write the fitted thresholds of the first method as JSON"
    )
    common_options(p)

    p = sub.add_parser(
        "explain",
        help="an image's labels with raw score, confidence and method",
        description="Show an indexed image's best labels in every label set applied.",
    )
    p.add_argument("image", metavar="PATH_OR_ID")
    p.add_argument("--top", type=int, default=5, help="labels per label set (default 5)")
    common_options(p)

    p = sub.add_parser(
        "export",
        help="tags and metadata of every image, or its stored vectors",
        description="Export every image with its metadata and the tags of the latest tag run "
        "(json, csv), or the published index's images with their stored embeddings (npz: arrays "
        "ids, uris, vectors and model). Filters as for search restrict it to the indexed images "
        "that pass them.",
    )
    p.add_argument(
        "--format",
        choices=("json", "csv", "npz", "label-studio"),
        default="json",
        help="output format (default json)",
    )
    p.add_argument(
        "--run", type=int, metavar="N", help="tag run whose tags are exported (default: the newest)"
    )
    p.add_argument(
        "--min-confidence",
        type=float,
        metavar="P",
        help="label-studio: pre-annotate the tags of calibrated confidence at least P (default 0.5)",
    )
    p.add_argument(
        "--image-url",
        metavar="TEMPLATE",
        help="label-studio: each task's image, with {id}, {uri} or {path} (default {uri}); e.g. "
        "'/data/local-files/?d={path}' for Label Studio's local files",
    )
    p.add_argument(
        "--label-config", metavar="FILE", help="label-studio: also write the matching labeling config (XML)"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    filter_options(p)
    common_options(p, json_flag=False)
    add_write_xmp_parser(sub)

    p = sub.add_parser(
        "status",
        help="counts, model and index version",
        description="Show counts, model identity, index version and type.",
    )
    common_options(p)
    p = sub.add_parser(
        "runs", help="index and tag runs, newest first", description="List runs, newest first."
    )
    p.add_argument("-n", "--limit", type=int, default=20, help="how many runs (default 20)")
    common_options(p)
    p = sub.add_parser(
        "failures",
        help="images that could not be indexed, with stage and reason",
        description="List recorded failures, newest first.",
    )
    p.add_argument("-n", "--limit", type=int, default=50, help="how many failures (default 50)")
    common_options(p)
    p = sub.add_parser(
        "check",
        help="verify index versions, shards and catalog; say how to repair",
        description="Hash every file of the published and previous index versions and "
        "every embedding shard the catalog points into, compare the catalog with the index, "
        "and print what is damaged and how to repair it (exit 5 when anything is).",
    )
    common_options(p)
    add_duplicates_parser(sub)
    add_corrections_parsers(sub, common_options)
    add_serve_parser(sub)
    return ap


def add_write_xmp_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "write-xmp",
        help="write a tag run's tags into the images' XMP sidecars",
        description="Write each indexed image's confident tags of a tag run into its XMP sidecar "
        "(dc:subject, lr:hierarchicalSubject, digiKam:TagsList), keeping everything else in it; "
        "originals are never modified.",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="only images under these paths (default: all)")
    p.add_argument(
        "--run", type=int, metavar="N", help="tag run whose tags are written (default: the newest)"
    )
    p.add_argument("--top", type=int, default=5, help="at most N tags per image, best first (default 5)")
    p.add_argument(
        "--min-confidence",
        type=float,
        default=0.5,
        metavar="P",
        help="tags of calibrated confidence at least P (default 0.5)",
    )
    p.add_argument(
        "--sidecar-name",
        choices=("full", "stem"),
        default="full",
        help="name of new sidecars: full (photo.jpg.xmp, default) or stem (photo.xmp)",
    )
    p.add_argument("--dry-run", action="store_true", help="write nothing; report what would change")
    common_options(p)
    return p


def add_duplicates_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``vistag duplicates [resolve TARGET]`` to ``vistag``'s subparsers."""
    p = subparsers.add_parser(
        "duplicates",
        help="exact copies, near copies and bursts, with the member to keep",
        description="List duplicate groups, largest first: exact (identical bytes), near (the same picture "
        "altered) and similar (shots of one moment), each with a suggested member to keep. "
        "`duplicates resolve GROUP_OR_ID --keep ID` or `--not-duplicates` remembers a decision.",
    )
    p.add_argument("action", nargs="?", choices=("resolve",), help="resolve: decide about one group")
    p.add_argument(
        "target", nargs="?", metavar="GROUP_OR_ID", help="with resolve: a group id or an image id of it"
    )
    p.add_argument(
        "--kind",
        choices=("exact", "near", "similar", "all"),
        default="all",
        help="which groups (default all)",
    )
    p.add_argument(
        "--threshold",
        type=int,
        metavar="BITS",
        help="largest perceptual-hash distance of near copies (default 10 of 64)",
    )
    p.add_argument(
        "--similarity",
        type=float,
        metavar="COS",
        help="cosine of similar shots (default: 0.9, or above what random pairs of the archive reach)",
    )
    p.add_argument("--within", type=float, metavar="MINUTES", help="time between similar shots (default 10)")
    p.add_argument(
        "--keep-rule", metavar="TESTS", help="the keeper's tests in order (default pixels,format,oldest)"
    )
    p.add_argument("--keep", type=int, metavar="ID", help="with resolve: the image to keep")
    p.add_argument(
        "--not-duplicates", action="store_true", help="with resolve: the group's pictures are not duplicates"
    )
    p.add_argument(
        "--move-to", metavar="DIR", help="with resolve --keep: move the others into DIR, keeping their paths"
    )
    common_options(p)
    return p


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` command to ``vistag``'s subparsers."""
    p = subparsers.add_parser(
        "serve",
        help="HTTP query service and web page",
        description="Serve the JSON API (OpenAPI schema at /openapi.json, Prometheus "
        "metrics at /metrics) and the search page at / until Ctrl-C. A newly "
        "published index version is picked up without a restart.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument(
        "--write-token",
        metavar="TOKEN",
        help="allow write operations (tag runs, duplicate decisions, corrections) to requests "
        f"with 'Authorization: Bearer TOKEN' (default: ${ENV_WRITE_TOKEN}; none: writes disabled)",
    )
    p.add_argument(
        "--max-k", type=int, default=200, help="most results one request may ask for (default 200)"
    )
    common_options(p, json_flag=False)
    return p


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


def option_names(command: str) -> list[str]:
    """Every option string of ``command`` (to suggest the nearest one for a misspelt option)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return [o for action in sub.choices[command]._actions for o in action.option_strings]  # noqa: SLF001
