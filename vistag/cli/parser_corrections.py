"""The options of the corrections commands: ``confirm``, ``reject``, ``corrections`` and ``review``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

CORRECTION_COMMANDS = ("confirm", "reject", "corrections", "review")


def add_corrections_parsers(
    subparsers: Any, common_options: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Add the corrections commands to ``vistag``'s subparsers."""
    for verb, does in (("confirm", "has"), ("reject", "does not have")):
        p = subparsers.add_parser(
            verb,
            help=f"{verb} a label for images: the image {does} it (tagging learns from it)",
            description=f"Record that each image {does} LABEL. The correction is kept by the image's "
            "content, so it follows the picture through moves, copies and re-indexing; a newer "
            "correction of the same content and label replaces the older.",
        )
        p.add_argument("images", nargs="*", metavar="PATH_OR_ID", help="an indexed image: path, URI or id")
        p.add_argument("--label", metavar="LABEL", help="the label")
        if verb == "confirm":
            p.add_argument(
                "--from-csv",
                metavar="FILE",
                help="record the rows of a CSV: uri_or_id,label[,yes|no] (default yes; relative paths "
                "from the CSV's folder); every row is checked before anything is written",
            )
            p.add_argument(
                "--from-keywords",
                action="store_true",
                help="confirm each of --labels for the images that carry it among their own keywords",
            )
            p.add_argument(
                "--labels", metavar="FILE_OR_LIST", help="with --from-keywords: labels as for `tag --labels`"
            )
        common_options(p)

    p = subparsers.add_parser(
        "corrections",
        help="list corrections, or withdraw some",
        description="List the confirmed and rejected labels, newest first, with where each "
        "corrected picture is now; --withdraw ID takes corrections back.",
    )
    p.add_argument("--label", metavar="LABEL", help="only the corrections of LABEL")
    p.add_argument("--all", action="store_true", help="also those withdrawn or replaced")
    p.add_argument("-n", "--limit", type=int, metavar="N", help="at most N (default: all)")
    p.add_argument("--withdraw", nargs="+", type=int, metavar="ID", help="withdraw these corrections")
    common_options(p)

    p = subparsers.add_parser(
        "review",
        help="the images whose confirmation would help tagging most",
        description="Score the archive and list, per label in turn, the images the tagger is least "
        "sure about (confidence nearest 0.5 among images with the label in their 3 best), leaving "
        "out what is already corrected; each with the command that confirms or rejects it.",
    )
    p.add_argument(
        "--labels",
        metavar="FILE_OR_LIST",
        help="labels as for `tag --labels` (default: those of the newest tag run)",
    )
    p.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="how many images (default 20)")
    p.add_argument(
        "--method",
        choices=("zeroshot", "zlap", "fewshot"),
        default="zeroshot",
        help="scoring (default zeroshot)",
    )
    common_options(p)
