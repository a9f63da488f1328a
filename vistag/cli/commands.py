"""The ``vistag`` commands: each turns parsed options into calls on :class:`vistag.api.Archive`
and prints the result (``--json`` where scripts consume it)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from core.errors import InputError
from vistag.cli.corrections import HANDLERS as CORRECTION_HANDLERS
from vistag.cli.output import print_json, print_rows, printable, write_atomic
from vistag.cli.parser import option_names
from vistag.cli.serve import cmd_serve


def beam_args(args: argparse.Namespace, extra: Sequence[str]) -> tuple[str, ...]:
    """The Beam pipeline options of an ``index`` command line: the options vistag does not know,
    each of which must be one of Beam's (a typo is an error naming the nearest option), plus --runner."""
    from pipeline.runners import check_beam_args

    return check_beam_args(extra, option_names("index")) + (
        (f"--runner={args.runner}",) if args.runner else ()
    )


def cmd_index(archive: Any, args: argparse.Namespace, extra: list[str]) -> int:
    options: dict[str, Any] = {
        "model": args.model,
        "pretrained": args.pretrained,
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "chunk_size": args.chunk_size,
        "decode_processes": args.decode_processes,
        "gpu_decode": args.gpu_decode,
        "index_type": args.index_type,
        "shards_root": args.shards,
        "memory_budget": args.memory_budget,
        "latency_target_ms": args.latency_target,
        "index_storage": args.index_storage,
        "dry_run": args.dry_run,
        "refresh_metadata": "all" if args.refresh_metadata_all else args.refresh_metadata,
        "progress": not args.no_progress and not args.json and sys.stderr.isatty(),
        "beam_args": beam_args(args, extra),
    }
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
        print_json(result.to_dict() | {"seconds": round(time.perf_counter() - start, 3)})
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
        print(
            f"{c['listed']} listed: {result.embedded} embedded, {result.reused} reused by content, "
            f"{c['unchanged']} unchanged, {result.failed} failed, {result.deleted} deleted "
            f"({time.perf_counter() - start:.1f}s)"
        )
        if result.index_version:
            print(f"published index {result.index_version} with {result.index_count} vectors")
        if result.tag_runs:
            print(f"tagged new images for earlier tag runs {', '.join(map(str, result.tag_runs))}")
        if result.failed:
            print("see `vistag failures` for the reasons")
    return 0


def _print_hits(hits: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([h.to_dict() for h in hits])
        return
    for hit in hits:
        print(f"{hit.score:8.4f}  {hit.id:>8}  {printable(hit.uri)}")
    if not hits:
        print("no indexed image matches", file=sys.stderr)


def cmd_search(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    _print_hits(archive.search(args.text, args.k, _where(args)), args.json)
    return 0


def cmd_similar(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    _print_hits(archive.similar(args.image, args.k, _where(args)), args.json)
    return 0


def _where(args: argparse.Namespace) -> Any:
    """The search filter of ``--since``, ``--until``, ``--path``, ``--tag``, ``--camera``, ``--near``
    and ``--keyword`` (None without any)."""
    from query.filters import parse_filter, path_prefix

    prefix = path_prefix(args.path) if args.path else None
    where = parse_filter(
        args.tag, prefix, args.since, args.until, camera=args.camera, near=args.near, keyword=args.keyword
    )
    return where or None


def cmd_tag(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    from query.evaluate import load_thresholds

    thresholds = load_thresholds(args.thresholds) if args.thresholds else None
    result = archive.tag(
        args.labels,
        top=args.top,
        method=args.method,
        min_confidence=args.min_confidence,
        templates=args.templates,
        thresholds=thresholds,
        store_top=args.store_top,
        store_all=args.store_all,
        where=_where(args),
        corrections=not args.no_corrections,
    )
    if args.json:
        print_json(result.top)
        return 0
    by_uri: dict[str, list[str]] = {}
    for row in result.top:
        by_uri.setdefault(row["uri"], []).append(f"{row['label']} ({row['confidence']:.2f})")
    for uri, labels in by_uri.items():
        print(printable(f"{uri}: {', '.join(labels)}"))
    stored = (
        f"{len(result.labels)} labels"
        if args.store_top is None
        else f"best {args.store_top} of {len(result.labels)} labels"
    )
    print(f"tag run {result.run_id}: {result.images} images x {stored} stored", file=sys.stderr)
    return 0


def cmd_eval(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    default = "zeroshot,zlap,fewshot" if args.shots else "zeroshot,zlap"
    methods = [m.strip() for m in (args.methods or default).split(",") if m.strip()]
    fit = args.fit_thresholds or bool(args.save_thresholds)
    report = archive.evaluate(
        args.truth,
        args.labels,
        methods=methods,
        min_confidence=args.min_confidence,
        fit_thresholds=fit,
        templates=args.templates,
        shots=args.shots,
    )
    if args.save_thresholds:
        first = report["methods"][methods[0]]["fitted"]["labels"]
        write_atomic(
            args.save_thresholds, json.dumps({k: v["threshold"] for k, v in first.items()}, indent=1)
        )
    if args.json:
        print_json(report)
        return 0
    about = report["truth"]
    if about["source"] == "keywords":
        print(
            f"truth: the keywords of {about['images']} images ({about['left_out']} indexed images "
            "with none of the labels among their keywords left out)"
        )
    results = report["methods"]
    print(f"{'':24}" + "".join(f"{m:>22}" for m in methods))
    print(f"{'top-1 accuracy':24}" + "".join(f"{results[m]['top1']:>22.3f}" for m in methods))
    print(f"{'mAP':24}" + "".join(f"{results[m]['map']:>22.3f}" for m in methods))
    print(f"{'label (P / R / AP)':24}" + "".join(f"{'at ' + str(args.min_confidence):>22}" for m in methods))
    for label in report["labels"]:
        cells = [results[m]["labels"][label] for m in methods]
        print(
            f"{printable(label)[:24]:24}"
            + "".join(f"{c['precision']:>8.2f}{c['recall']:>7.2f}{c['ap']:>7.2f}" for c in cells)
        )
    if "shots" in report:
        _print_shots(report, methods)
    return 0


def _print_shots(report: dict[str, Any], methods: list[str]) -> None:
    """The table shots x methods of ``eval --shots``: top-1 accuracy (ECE)."""
    print(f"\nconfirmed per label, top-1 accuracy (ECE) on {report['shots_test_images']} images never drawn:")
    print(f"{'shots':>6}" + "".join(f"{m:>22}" for m in methods))
    for n, row in report["shots"].items():
        print(f"{n:>6}" + "".join(f"{row[m]['top1']:>14.3f} ({row[m]['ece']:.3f})" for m in methods))


def cmd_explain(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    rows = archive.explain(args.image, args.top)
    if args.json:
        print_json(rows)
        return 0
    for line in _detail_lines(archive.describe(args.image)):
        print(printable(line))
    if not rows:
        print("no tags for this image yet (run `vistag tag`)")
    for r in rows:
        print(
            printable(
                f"run {r['run_id']:>4}  {r['method']:<15}  {r['label']:<30}  confidence "
                f"{r['confidence'] if r['confidence'] is not None else float('nan'):.3f}  "
                f"(score {r['score']:.5g})"
            )
        )
    return 0


def _detail_lines(image: dict[str, Any]) -> list[str]:
    """An image's photo metadata and corrections as ``name  value`` lines (unknown ones left out)."""
    taken = image["taken"]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(taken)) if taken is not None else None
    has_place = image["lat"] is not None and image["lon"] is not None
    fixed = [
        f"{'confirmed' if c['verdict'] == 'yes' else 'rejected'} {c['label']}" for c in image["corrections"]
    ]
    lines = [
        ("image", f"{image['id']}  {image['uri']}"),
        ("taken", when),
        ("camera", " / ".join(v for v in (image["camera"], image["lens"]) if v) or None),
        ("place", f"{image['lat']:.5f}, {image['lon']:.5f}" if has_place else None),
        ("keywords", ", ".join(image["keywords"]) or None),
        ("corrected", ", ".join(fixed) or None),
    ]
    return [f"{name:<10}{value}" for name, value in lines if value is not None]


def cmd_untag(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    deleted = [archive.delete_tag_run(run_id) for run_id in args.run_ids]
    if args.json:
        print_json(deleted)
        return 0
    for d in deleted:
        others = d["still_applied"]
        after = (
            f"run {', '.join(map(str, others))} with the same labels is still applied to new images"
            if others
            else "its labels are no longer applied to new images"
        )
        print(f"deleted tag run {d['run_id']} ({d['tags']} tags); {after}")
    return 0


def cmd_export(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    _check_export_options(args)
    if args.format == "npz":
        binary = getattr(sys.stdout, "buffer", None)
        if not args.output and (binary is None or sys.stdout.isatty()):
            raise InputError("npz is a binary format: pass -o FILE (or redirect standard output)")
        count = archive.export_vectors(args.output or binary, _where(args))
        if args.output:
            print(f"wrote {count} vectors to {printable(args.output)}", file=sys.stderr)
        return 0
    if args.format == "label-studio":
        confidence = 0.5 if args.min_confidence is None else args.min_confidence
        url = args.image_url or "{uri}"
        text = archive.export(
            "label-studio", run=args.run, min_confidence=confidence, image_url=url, where=_where(args)
        )
        if args.label_config:
            write_atomic(args.label_config, archive.label_studio_config(args.run))
    else:
        text = archive.export(args.format, run=args.run, where=_where(args))
    if args.output:
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _check_export_options(args: argparse.Namespace) -> None:
    """An option given to a format it does not apply to is an error, not ignored."""
    only = {
        "--min-confidence": (args.min_confidence, ("label-studio",)),
        "--image-url": (args.image_url, ("label-studio",)),
        "--label-config": (args.label_config, ("label-studio",)),
        "--run": (args.run, ("json", "csv", "label-studio")),
    }
    for name, (value, formats) in only.items():
        if value is not None and args.format not in formats:
            raise InputError(f"{name} does not apply to --format {args.format} (only {', '.join(formats)})")


def cmd_write_xmp(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    result = archive.write_xmp(
        args.paths,
        run=args.run,
        top=args.top,
        min_confidence=args.min_confidence,
        sidecar_name=args.sidecar_name,
        dry_run=args.dry_run,
    )
    for line in result.warnings:  # on stderr with --json too: scripts read stdout
        print(printable(f"warning: {line}"), file=sys.stderr)
    if args.json:
        print_json(result.to_dict())
        return 0
    for entry in result.images:
        if entry["status"] in ("created", "updated"):
            changes = [f"+{k}" for k in entry["added"].get("dc:subject", [])]
            changes += [f"-{k}" for k in entry["removed"].get("dc:subject", [])]
            print(printable(f"{entry['status']:<8} {entry['sidecar']}  {' '.join(changes)}"))
        elif entry["status"] in ("failed", "skipped"):
            print(printable(f"{entry['status']:<8} {entry['uri']}: {entry['reason']}"), file=sys.stderr)
    totals = ", ".join(f"{n} {s}" for s, n in result.totals().items() if s != "images")
    would = " (dry run: nothing written)" if args.dry_run else ""
    print(f"tag run {result.run_id}: {result.totals()['images']} images: {totals}{would}", file=sys.stderr)
    return 0


def cmd_status(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    status = archive.status()
    if args.json:
        print_json(status)
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
        print(
            f"model:    {m['model']} ({m['pretrained'] or 'weights in model folder'}), {m['embed_dim']}-d, key {m['key']}"
        )
        print(f"index:    {i['version']} ({i['type']}, {i['count']} vectors)")
        for e in i["engines"]:
            cosine = f", min cosine to torch fp32 {e['min_cosine']}" if e.get("engine") != "torch" else ""
            print(f"engine:   {e['engine']} {e.get('precision') or ''}: {e['vectors']} vectors{cosine}")
    elif not status.get("problem"):
        print("index:    none published yet (run `vistag index PATH`)")
    return 0


def cmd_check(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    report = archive.check()
    if args.json:
        print_json(report)
        return 0 if report["ok"] else 5
    c = report["checked"]
    print(
        f"checked {c['versions']} index versions and {c['shards']} shards ({c['files']} files, "
        f"{c['bytes'] / 2**20:.1f} MiB hashed) in {report['seconds']:.1f}s"
    )
    for d in report["damaged"]:
        print(printable(f"damaged {d['kind']}: {d['path']}: {d['problem']}"))
        print(printable(f"  repair: {d['repair']}"))
    for note in report["notes"]:
        print(printable(f"note: {note}"))
    print("ok: nothing damaged" if report["ok"] else f"{len(report['damaged'])} damaged")
    return 0 if report["ok"] else 5


def _run_line(r: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
    return (
        f"{r['id']:>5}  {r['kind']:<5}  {r['status']:<11}  {when}  embedded {r['embedded']}, "
        f"failed {r['failed']}, deleted {r['deleted']}"
    )


def cmd_runs(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    return print_rows(archive.runs(args.limit), args.json, _run_line)


def cmd_failures(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    return print_rows(
        archive.failures(args.limit),
        args.json,
        lambda r: printable(f"{r['stage']:<10}  {r['uri']}: {r['reason']}"),
    )


def cmd_duplicates(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    options = {
        "kind": args.kind,
        "threshold": args.threshold,
        "similarity": args.similarity,
        "within": args.within * 60 if args.within is not None else None,
        "keep_rule": args.keep_rule,
    }
    if args.action == "resolve":
        return _resolve(archive, args, options)
    if args.target or args.keep is not None or args.not_duplicates or args.move_to:
        raise InputError(
            "GROUP_OR_ID, --keep, --not-duplicates and --move-to go with `vistag duplicates resolve`"
        )
    found = archive.duplicates(**options)
    if args.json:
        print_json(found["groups"])
        return 0
    for group in found["groups"]:
        print(
            f"{group['id']}  {group['kind']:<7}  {len(group['members'])} images, keep {group['keep']} ({group['why']})"
        )
        for m in group["members"]:
            mark = "*" if m["id"] == group["keep"] else " "
            print(printable(f"  {mark} {m['id']:>8}  {m['width']}x{m['height']}  {m['uri']}"))
    if found["unhashed"]:
        print(
            f"{found['unhashed']} images have no perceptual hash yet: `vistag index PATH --refresh-metadata` "
            "adds it (without it, only their embeddings find near copies)",
            file=sys.stderr,
        )
    print(f"{len(found['groups'])} groups", file=sys.stderr)
    return 0


def _resolve(archive: Any, args: argparse.Namespace, options: dict[str, Any]) -> int:
    if not args.target:
        raise InputError("say which group: `vistag duplicates resolve GROUP_OR_ID --keep ID`")
    done = archive.resolve_duplicates(
        args.target, keep=args.keep, not_duplicates=args.not_duplicates, move_to=args.move_to, **options
    )
    if args.json:
        print_json({"group": done["group"]["id"], "decision": done["decision"], "moved": done["moved"]})
        return 0
    what = "not duplicates" if args.not_duplicates else f"keep {args.keep}"
    print(f"{done['group']['id']}: {what} (remembered: the group is not listed again)")
    for source, destination in done["moved"]:
        print(printable(f"  moved {source} -> {destination}"))
    return 0


HANDLERS = {
    "index": cmd_index,
    "search": cmd_search,
    "similar": cmd_similar,
    "tag": cmd_tag,
    "untag": cmd_untag,
    "eval": cmd_eval,
    "explain": cmd_explain,
    "export": cmd_export,
    "write-xmp": cmd_write_xmp,
    "status": cmd_status,
    "runs": cmd_runs,
    "failures": cmd_failures,
    "serve": cmd_serve,
    "check": cmd_check,
    "duplicates": cmd_duplicates,
    **CORRECTION_HANDLERS,
}
