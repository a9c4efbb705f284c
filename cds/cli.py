"""`twitch-cds serve`: run the service with uvicorn."""

from __future__ import annotations

import argparse
import os

import uvicorn

from cds import demo
from cds.logs import server_log_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="twitch-cds", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the CDS Hooks service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    demo.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "demo":
        raise SystemExit(demo.main(args))
    # uvicorn's own lines (before the app configures logging, and in the supervisor of the
    # workers) are JSON like the service's: one format on stdout. The level of the root
    # logger follows the service setting; the app's settings validate it again at start.
    level = os.environ.get("TWITCH_CDS_LOG_LEVEL", "INFO").upper()
    uvicorn.run("cds.app:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, access_log=False, proxy_headers=False,
                server_header=False, timeout_graceful_shutdown=10,
                log_config=server_log_config(level if level in _LEVELS else "INFO"))


_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


if __name__ == "__main__":
    main()
