"""`twitch-cds`: the command line of the service, for operators and knowledge authors.

Each command's work lives in the module named for it; this file only declares the commands
and their options. Those modules are imported when their command runs: `serve` must set up
the metrics directory before anything imports prometheus-client (see cds.serving).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cds import demo

Command = Callable[[argparse.Namespace], int | None]


def _serve(args: argparse.Namespace) -> None:
    from cds.serving import serve

    serve(args.host, args.port, args.workers)


def build_parser() -> argparse.ArgumentParser:
    from cds.serving import env_default

    parser = argparse.ArgumentParser(prog="twitch-cds", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="run the CDS Hooks service (uvicorn)",
        description="Run the CDS Hooks service. Every other setting: TWITCH_CDS_* variables.")
    serve.add_argument("--host", default=env_default("HOST", "127.0.0.1"),
                       help="address to listen on (TWITCH_CDS_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=int(env_default("PORT", "8000")),
                       help="port (TWITCH_CDS_PORT; default 8000)")
    serve.add_argument("--workers", type=int, default=int(env_default("WORKERS", "1")),
                       help="worker processes (TWITCH_CDS_WORKERS; default 1)")
    serve.set_defaults(run=_serve)
    demo.add_parser(commands)
    commands.choices["demo"].set_defaults(run=demo.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Command = args.run
    return run(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
