"""`emoclapd` subcommands for the service: run, capture, encode, serve, history export."""
from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_CONFIG = "config.toml"


def _stage(stages):
    def handler(args) -> int:
        from .notify import setup_logging
        from .service import run_service

        setup_logging(args.log_level)
        return run_service(args.config, stages)
    return handler


def _history_export(args) -> int:
    from .config import ConfigError, load_config
    from .history import History, HistoryError, export, parse_time

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        cfg = load_config(args.config)
        since = parse_time(args.since, "--since") if args.since else None
        until = parse_time(args.until, "--until") if args.until else None
        history = History(cfg.history.path)
        out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
        try:
            n = export(history.events(since, until, args.station), out, args.format)
        finally:
            if args.output:
                out.close()
    except (ConfigError, HistoryError) as exc:
        print(f"emoclapd: {exc}", file=sys.stderr)
        return 2
    print(f"exported {n} utterances", file=sys.stderr)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the service subcommands on the `emoclapd` parser's subparsers."""
    stages = {
        "run": (("capture", "encode", "serve"), "run every stage in one process"),
        "capture": (("capture",), "capture and segment audio, push utterances to the encode stage"),
        "encode": (("encode",), "embed utterances from capture agents, push them to the serve stage"),
        "serve": (("serve",), "score, record and publish (WebSocket, history, metrics); takes /ingest audio"),
    }
    for name, (parts, help_text) in stages.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", default=DEFAULT_CONFIG, help="configuration file (default: %(default)s)")
        p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
        p.set_defaults(func=_stage(parts))

    history = sub.add_parser("history", help="utterance history")
    hsub = history.add_subparsers(dest="history_command", required=True)
    ex = hsub.add_parser("export", help="export scored utterances as CSV or JSON Lines")
    ex.add_argument("--config", default=DEFAULT_CONFIG)
    ex.add_argument("--since", help="ISO 8601 time (UTC unless a zone is given) or Unix seconds")
    ex.add_argument("--until", help="end of the range (exclusive), same forms")
    ex.add_argument("--station", help="only this station")
    ex.add_argument("--format", default="csv", choices=["csv", "jsonl"])
    ex.add_argument("--output", "-o", help="file to write (default: standard output)")
    ex.set_defaults(func=_history_export)
