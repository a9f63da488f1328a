"""The corrections commands: ``confirm``, ``reject``, ``corrections`` and ``review``."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from core.errors import InputError
from vistag.cli.output import print_json, printable


def cmd_confirm(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    modes = [bool(args.images or args.label), bool(args.from_csv), bool(args.from_keywords)]
    if sum(modes) != 1:
        raise InputError(
            "give PATH_OR_ID... --label LABEL, or --from-csv FILE, or --from-keywords --labels LIST"
        )
    if args.labels is not None and not args.from_keywords:
        raise InputError("--labels goes with --from-keywords (one label: --label LABEL)")
    if args.from_csv:
        return _report(archive.import_corrections(args.from_csv), args.json)
    if args.from_keywords:
        if not args.labels:
            raise InputError("--from-keywords needs --labels: the keywords that are labels")
        return _report(archive.corrections_from_keywords(args.labels), args.json)
    return cmd_reject(archive, args, _, verdict="yes")


def cmd_reject(archive: Any, args: argparse.Namespace, _: list[str], verdict: str = "no") -> int:
    if not args.images or not args.label:
        raise InputError(
            f"give the images and the label: `vistag {args.command} PATH_OR_ID... --label LABEL`"
        )
    done = (archive.confirm if verdict == "yes" else archive.reject)(args.images, args.label)
    return _report(done, args.json)


def _report(done: list[dict[str, Any]], as_json: bool) -> int:
    if as_json:
        print_json(done)
        return 0
    for row in done:
        what = "confirmed" if row["verdict"] == "yes" else "rejected"
        print(printable(f"{row['id']:>6}  {row['state']:<9}  {what} {row['label']!r} for {row['uri']}"))
    counts = {s: sum(r["state"] == s for r in done) for s in ("added", "replaced", "unchanged")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()), file=sys.stderr)
    return 0


def cmd_corrections(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    if args.withdraw:
        if args.label or args.all or args.limit is not None:
            raise InputError("--withdraw takes correction ids only (no --label, --all or -n)")
        done = archive.withdraw_corrections(args.withdraw)
        if args.json:
            print_json(done)
        else:
            print(f"withdrew {len(done['withdrawn'])}: {' '.join(map(str, done['withdrawn'])) or '-'}")
            if done["already"]:
                print(f"already withdrawn: {' '.join(map(str, done['already']))}", file=sys.stderr)
        return 0
    rows = archive.corrections(args.label, withdrawn=args.all, limit=args.limit)
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))
        where = (
            ", ".join(f"{i['id']} {i['uri']}" for i in r["images"]) or f"(not indexed now; was {r['uri']})"
        )
        gone = "  withdrawn" if r["withdrawn"] else ""
        print(
            printable(
                f"{r['id']:>6}  {r['verdict']:<3}  {r['label']:<24}  {r['source']:<8}  {when}{gone}  {where}"
            )
        )
    if not rows:
        print("no corrections yet (`vistag confirm` / `vistag reject`)", file=sys.stderr)
    return 0


def cmd_review(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    items = archive.review(args.labels, n=args.limit, method=args.method)
    where = [f"--home={shlex.quote(str(args.home))}"] if args.home else []  # the home knows its database
    for item in items:
        tail = " ".join([str(item["id"]), "--label", shlex.quote(item["label"]), *where])
        item["hint"] = {"confirm": f"vistag confirm {tail}", "reject": f"vistag reject {tail}"}
    if args.json:
        print_json(items)
        return 0
    for item in items:
        print(
            printable(
                f"{item['id']:>8}  {item['label']:<24}  confidence {item['confidence']:.2f}  "
                f"rank {item['rank'] + 1}  {item['uri']}"
            )
        )
        print(printable(f"          {item['hint']['confirm']}   |   {item['hint']['reject']}"))
    if not items:
        print("nothing to review: every candidate is corrected already", file=sys.stderr)
    return 0


HANDLERS = {
    "confirm": cmd_confirm,
    "reject": cmd_reject,
    "corrections": cmd_corrections,
    "review": cmd_review,
}
