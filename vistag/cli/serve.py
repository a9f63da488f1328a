"""``vistag serve``: the HTTP service and web page of :mod:`vistag.http`, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from vistag.cli.parser import ENV_WRITE_TOKEN


def service_config(args: argparse.Namespace) -> Any:
    """The :class:`vistag.http.config.ServiceConfig` of the parsed options."""
    from vistag.http.config import LOOPBACK_HOSTS, ServiceConfig, is_loopback

    token = args.write_token or os.environ.get(ENV_WRITE_TOKEN) or None
    # a loopback bind answers loopback names and its own address (printed as the URL); others any Host
    hosts = tuple(dict.fromkeys((*LOOPBACK_HOSTS, args.host.lower()))) if is_loopback(args.host) else None
    return ServiceConfig(max_k=args.max_k, write_token=token, allowed_hosts=hosts)


def cmd_serve(archive: Any, args: argparse.Namespace, _: list[str]) -> int:
    """Serve until Ctrl-C or SIGTERM; both stop gracefully (running requests finish)."""
    from vistag.http.server import listen, serve

    config = service_config(args)
    sock = listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    writes = "enabled" if config.write_token else "disabled"
    print(
        f"vistag: serving {archive.home.root} on http://{shown}:{port}/ (writes {writes}; Ctrl-C stops)",
        file=sys.stderr,
        flush=True,
    )
    try:
        serve(archive, config, sock=sock, verbose=args.verbose)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    print("vistag: server stopped", file=sys.stderr)
    return 0
