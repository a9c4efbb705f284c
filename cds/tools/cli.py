"""`twitch-cds`: the command line of the service, for operators and knowledge authors.

Each command's work lives in the module named for it; this file only declares the commands
and their options. Those modules are imported when their command runs: `serve` must set up
the metrics directory before anything imports prometheus-client (see cds.web.serving).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from cds.tools import demo

if TYPE_CHECKING:
    from cds.decision.catalog import Service
    from cds.knowledge import Knowledge
    from cds.settings import Settings

Command = Callable[[argparse.Namespace], int | None]


def _serve(args: argparse.Namespace) -> None:
    from cds.web.serving import serve

    serve(args.host, args.port, args.workers)


def _migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from cds.settings import get_settings
    from cds.store.storage import migrate_database

    try:
        revision = migrate_database(args.database_url or get_settings().database_url)
    except SQLAlchemyError as error:  # one line, not a traceback, in a Job's or pod's log
        first_line = str(getattr(error, "orig", None) or error).splitlines()[0]
        print(f"twitch-cds migrate: {type(error).__name__}: {first_line}", file=sys.stderr)
        return 1
    print(f"twitch-cds migrate: database schema at revision {revision}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cds.decision.pipeline import build_pipeline
    from cds.tools.evaluation import EvaluationError, evaluate, render_table

    settings, knowledge, services = _knowledge()
    try:
        result = evaluate(
            args.file,
            services,
            build_pipeline(knowledge, settings),
            args.hook,
            args.as_of or date.today(),
        )
    except (EvaluationError, OSError) as error:
        print(f"twitch-cds evaluate: {args.file}: {error}", file=sys.stderr)
        return 2
    cards = result.decision.cards
    if args.json:
        from cds.cdshooks import CardsResponse

        print(CardsResponse(cards=cards).model_dump_json(indent=2, exclude_none=True))
    else:
        print(
            f"{result.service.id} ({result.service.hook}), as of "
            f"{(args.as_of or date.today()).isoformat()}: {len(cards)} card(s)\n"
        )
        print(render_table(cards))
    return 0


def _rules(_args: argparse.Namespace) -> None:
    from cds.tools.clinical_logic import render

    print(render(_knowledge()[1]), end="")


def _check_rules(args: argparse.Namespace) -> int:
    from cds.settings import get_settings
    from cds.tools.rules_check import check

    rules_dir = args.rules_dir or get_settings().rules_dir
    problems = check(rules_dir)
    for problem in problems:
        print(problem)
    print(
        f"{rules_dir}: {len(problems)} problem(s)" if problems else f"{rules_dir}: OK",
        file=sys.stderr if problems else sys.stdout,
    )
    return 1 if problems else 0


def _discovery(_args: argparse.Namespace) -> None:
    from cds.decision.catalog import discovery

    print(discovery(_knowledge()[2]).model_dump_json(indent=2, exclude_none=True))


def _feedback_report(args: argparse.Namespace) -> int:
    from cds.store.feedback_report import SchemaNotCurrent, collect, render_json, render_table
    from cds.store.storage import make_engine

    settings, knowledge, _ = _knowledge()
    engine = make_engine(args.database_url or settings.database_url)
    try:
        report = collect(engine, knowledge)
    except SchemaNotCurrent as error:
        print(f"twitch-cds feedback-report: {error}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(render_json(report) if args.json else render_table(report))
    return 0


def _knowledge() -> tuple[Settings, Knowledge, dict[str, Service]]:
    """Settings from the environment, rules/ and hooks/ as the service would load them."""
    from cds.decision.catalog import load_catalog
    from cds.knowledge import load_knowledge
    from cds.settings import get_settings

    settings = get_settings()
    knowledge = load_knowledge(settings.rules_dir)
    return settings, knowledge, load_catalog(settings.hooks_dir, knowledge)


def build_parser() -> argparse.ArgumentParser:
    from cds.web.serving import env_default

    parser = argparse.ArgumentParser(
        prog="twitch-cds",
        description="twitch-cds, a CDS Hooks service on muscle twitching: "
        "run it, evaluate records, and check and inspect its rules. COMMAND --help for more.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the CDS Hooks service (uvicorn)",
        description="Run the CDS Hooks service. Every other setting: TWITCH_CDS_* variables.",
    )
    serve.add_argument(
        "--host",
        default=env_default("HOST", "127.0.0.1"),
        help="address to listen on (TWITCH_CDS_HOST; default 127.0.0.1)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=int(env_default("PORT", "8000")),
        help="port (TWITCH_CDS_PORT; default 8000)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=int(env_default("WORKERS", "1")),
        help="worker processes (TWITCH_CDS_WORKERS; default 1)",
    )
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser(
        "migrate",
        help="bring the database schema to the current revision, then exit",
        description="Apply the database migrations (Alembic) under a lock, so that any number "
        "of replicas or Jobs may run it at once: one applies them, the others wait and find the "
        "schema current. `serve` does the same at start; this runs it on its own (a Kubernetes "
        "init container or Job, a deploy script).",
    )
    migrate.add_argument("--database-url", help="default: TWITCH_CDS_DATABASE_URL")
    migrate.set_defaults(run=_migrate)

    evaluate = commands.add_parser(
        "evaluate",
        help="print the cards for a record on disk",
        description="Print the cards a service answers for FILE: a FHIR Bundle (one patient), "
        "a CDS Hooks request, or an NDJSON export. Nothing is fetched or stored.",
    )
    evaluate.add_argument("file", type=Path, metavar="FILE")
    evaluate.add_argument(
        "--hook",
        choices=["patient-view", "order-select", "order-sign"],
        help="the hook to evaluate (default: the request's, or patient-view)",
    )
    evaluate.add_argument(
        "--as-of",
        type=date.fromisoformat,
        metavar="DATE",
        help="evaluate as if today were DATE (YYYY-MM-DD): old data counts",
    )
    evaluate.add_argument(
        "--json", action="store_true", help="print the CDS Hooks response JSON instead of a table"
    )
    evaluate.set_defaults(run=_evaluate)

    commands.add_parser(
        "rules",
        help="print the clinical logic table from rules/",
        description="Print, finding by finding, the data used, thresholds with units, "
        "indicator and source (Markdown; docs/clinical-logic.md is this output).",
    ).set_defaults(run=_rules)

    check_rules = commands.add_parser(
        "check-rules",
        help="validate rules/ and list every problem",
        description="Check rules/: YAML, code systems, sources, units of thresholds, "
        "duplicate codes, references between files. Exit status 1 on problems.",
    )
    check_rules.add_argument(
        "--rules-dir", type=Path, help="directory to check (default: TWITCH_CDS_RULES_DIR)"
    )
    check_rules.set_defaults(run=_check_rules)

    commands.add_parser(
        "discovery",
        help="print the service definitions (GET /cds-services)",
        description="Print the CDS Hooks discovery document this deployment publishes.",
    ).set_defaults(run=_discovery)

    report = commands.add_parser(
        "feedback-report",
        help="per card topic: accepted, overridden, reasons",
        description="From the feedback database: per card topic, the cards issued, answered, "
        "accepted and overridden, overridden/issued and overridden/answered side by side, and "
        "the override reasons, noisiest first.",
    )
    report.add_argument("--database-url", help="default: TWITCH_CDS_DATABASE_URL")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.set_defaults(run=_feedback_report)

    demo.add_parser(commands)
    commands.choices["demo"].set_defaults(run=demo.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Command = args.run
    try:
        return run(args) or 0
    except BrokenPipeError:  # `twitch-cds rules | head`: the reader has all it wanted
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
