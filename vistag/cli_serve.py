"""``vistag serve``: the HTTP query service and web page of :mod:`query.service`.

Wired into :mod:`vistag.cli` by ``add_parser(sub)`` in ``build_parser`` and ``"serve": cmd_serve``
in its handlers; ``python -m vistag.cli_serve ARGS`` runs the same command on its own.
Nothing heavy (FastAPI, uvicorn) is imported until the command runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from vistag.errors import VistagError

ENV_WRITE_TOKEN = "VISTAG_WRITE_TOKEN"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` command to ``vistag``'s subparsers."""
    from vistag.cli import _common

    p = subparsers.add_parser("serve", help="HTTP query service and web page",
                              description="Serve the JSON API (OpenAPI schema at /openapi.json, Prometheus "
                              "metrics at /metrics) and the search page at / until Ctrl-C. A newly "
                              "published index version is picked up without a restart.")  # fmt: skip
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--write-token", metavar="TOKEN", help="allow write operations (POST /api/tag) to requests "
                   f"with 'Authorization: Bearer TOKEN' (default: ${ENV_WRITE_TOKEN}; none: writes disabled)")  # fmt: skip
    p.add_argument(
        "--max-k", type=int, default=200, help="most results one request may ask for (default 200)"
    )
    _common(p, json_flag=False)
    return p


def service_config(args: argparse.Namespace) -> Any:
    """The :class:`query.service.ServiceConfig` of the parsed options."""
    from query.service import LOOPBACK_HOSTS, ServiceConfig, is_loopback

    token = args.write_token or os.environ.get(ENV_WRITE_TOKEN) or None
    # a loopback bind answers loopback names and its own address (printed as the URL); others any Host
    hosts = tuple(dict.fromkeys((*LOOPBACK_HOSTS, args.host.lower()))) if is_loopback(args.host) else None
    return ServiceConfig(max_k=args.max_k, write_token=token, allowed_hosts=hosts)


def cmd_serve(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    """Serve until Ctrl-C or SIGTERM; both stop gracefully (running requests finish)."""
    from query.service import listen, serve

    config = service_config(args)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    writes = "enabled" if config.write_token else "disabled"
    print(f"vistag: serving {archive.home.root} on http://{shown}:{port}/ (writes {writes}; Ctrl-C stops)",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        serve(archive, config, sock=sock, verbose=args.verbose)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    print("vistag: server stopped", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m vistag.cli_serve ARGS``: ``vistag serve ARGS``, with the CLI's error handling."""
    parser = argparse.ArgumentParser(prog="vistag")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip
    from vistag.api import Archive

    try:
        with Archive(args.home, args.db, args.device) as archive:
            return cmd_serve(archive, args, [])
    except VistagError as err:
        print(f"vistag: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("vistag: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
