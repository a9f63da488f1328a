"""The ``vistag`` command: parses arguments, calls :class:`vistag.api.Archive`, formats results.

Library errors arrive as typed exceptions and leave as one line on stderr with a non-zero code.
Parsing (:mod:`vistag.cli.parser`) imports nothing heavy; each command imports what it uses.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from core.errors import VistagError
from vistag.cli.commands import HANDLERS
from vistag.cli.output import fail, printable
from vistag.cli.parser import COMMANDS, build_parser

__all__ = ["COMMANDS", "build_parser", "main", "printable"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "index":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # Beam and its optional clients log warnings at import that are noise to a CLI user.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.ERROR)  # Dask logs INFO on its own
        logging.getLogger("core.engines").setLevel(logging.WARNING)  # an engine that fell back to torch
    from vistag.api import Archive

    try:
        with Archive(
            args.home, args.db, args.device, change_db=getattr(args, "change_db", False), engine=args.engine
        ) as archive:
            return HANDLERS[args.command](archive, args, extra)
    except VistagError as err:
        return fail(str(err), err.exit_code)
    except _database_errors() as err:
        return fail(f"catalog database: {str(getattr(err, 'orig', None) or err).splitlines()[0]}", 5)
    except OSError as err:  # disk full, permissions, I/O errors while writing state
        where = f": {err.filename}" if getattr(err, "filename", None) else ""
        return fail(f"{err.strerror or err}{where}", 5)
    except KeyboardInterrupt:
        print("vistag: interrupted", file=sys.stderr)
        return 130


def _database_errors() -> type[Exception]:
    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError
