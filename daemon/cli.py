"""`emoclapd`: the daemon's command line. Each subcommand is one registered function."""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Callable

from daemon.config import ConfigError, load_config
from daemon.backends import audio_encoder
from daemon.encoder import EncoderError, TextEncoder
from daemon.prompt_bank import PromptBank, PromptBankOptions
from emoclap.audio import AudioError, read_channels
from emoclap.bundle import BundleError, load_bundle
from emoclap.prompts import PromptError
from emoclap.record import ROLES, csv_header, csv_row, speech_event
from emoclap.scorer import Scorer
from emoclap.station import StationStream

log = logging.getLogger("emoclapd")

COMMANDS: dict[str, tuple[str, tuple, Callable[[argparse.Namespace], int]]] = {}


def arg(*names: str, **kwargs) -> tuple:
    """One argparse argument, for `command(...)`."""
    return names, kwargs


def command(name: str, help: str, *arguments: tuple):
    """Register `fn(args) -> exit code` as `emoclapd NAME` with the given `arg(...)`s."""
    def register(fn: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, arguments, fn)
        return fn
    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoclapd", description="emoclap speech-emotion daemon")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, arguments, fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        for names, kwargs in arguments:
            p.add_argument(*names, **kwargs)
        p.set_defaults(handler=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.handler(args)
    except (BundleError, EncoderError, PromptError, ConfigError) as exc:
        print(f"emoclapd {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


MODEL_ARGS = (
    arg("--bundle", default="data/demo-bundle", help="model bundle folder (default: %(default)s)"),
    arg("--prompts", default="prompts", help="prompt folder (default: %(default)s)"),
    arg("--provider", default="auto", choices=("auto", "cpu", "cuda"), help="ONNX Runtime provider"),
    arg("--cache", default="var/prompt-cache.sqlite3",
        help="prompt-embedding cache file; '' keeps it in memory (default: %(default)s)"),
)


def score_config(path: str | None):
    """The daemon's configuration, so offline scores match live ones (segmenter, encoder)."""
    from daemon.config import Config

    if path is None:
        if not Path("config.toml").is_file():
            return Config()
        path = "config.toml"
    return load_config(path)


@command("score", "score audio files offline: one line per utterance",
         arg("files", nargs="+", metavar="FILE", help="audio files; every channel is its own station"),
         *MODEL_ARGS,
         arg("--format", default="jsonl", choices=("jsonl", "csv"), help="output format"),
         arg("--config", default=None,
             help="segment, check and encode with this configuration's [segmenter], [quality] and "
                  "[encoder] settings, as the daemon does (default: config.toml when it exists, "
                  "else the built-in defaults)"),
         arg("--role", default=None,
             help="role of every channel, or one per channel separated by commas "
                  "(e.g. staff,customer); emotions for other roles are left out"),
         arg("--transcripts", action="store_true",
             help="print what each utterance said as the text path read it (personal data: "
                  "off unless asked, like [transcripts] publish)"))
def score_command(args) -> int:
    cfg = score_config(args.config)
    roles = args.role.split(",") if args.role else ["auto"]
    for role in roles:
        if role not in ROLES:
            raise ConfigError(f"--role: expected {', '.join(ROLES)}, got {role!r}")
    bundle = load_bundle(args.bundle)
    from .transcriber import utterance_reader

    text_encoder = TextEncoder(bundle, provider=args.provider)
    # [encoder] backend: ONNX Runtime or Triton; the text path where the bundle and [transcripts] allow
    encoder = utterance_reader(bundle, audio_encoder(cfg, bundle, args.provider), text_encoder,
                               cfg.transcripts.enabled, args.provider or cfg.provider, cfg.encoder.threads)
    bank = PromptBank(args.prompts, text_encoder, PromptBankOptions(cache=args.cache or None))
    log.info("bundle %s on %s; emotions: %s", bundle.folder, encoder.provider, ", ".join(bank.vectors.names))
    for message in bank.errors.values():
        print(f"emoclapd score: {message}", file=sys.stderr)
    scorer, policy = Scorer(bank, cfg.rolling.half_life_s), cfg.privacy.policy()
    for warning in policy.warnings():
        print(f"emoclapd score: warning: {warning}", file=sys.stderr)
    for role in dict.fromkeys(roles):
        if not policy.scores(role):
            print(f"emoclapd score: role {role!r} is not scored (privacy.scored_roles = "
                  f"{list(policy.scored_roles)}): its utterances are listed without scores"
                  + ("; pass --role customer for a customer's recording" if role == "auto" else ""),
                  file=sys.stderr)
    names = list(bank.vectors.names)
    writer = None
    if args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(csv_header(["file", "station", "role"], names))
    failed, skipped = bool(bank.errors), 0
    for path in args.files:
        try:
            if not Path(path).is_file():
                raise AudioError(f"{path}: no such file")
            channels = read_channels(path, bundle.sample_rate)
        except (AudioError, OSError) as exc:
            print(f"emoclapd score: {exc}", file=sys.stderr)
            failed = True
            continue
        for index, samples in enumerate(channels):
            stream = StationStream(f"channel{index}", roles[min(index, len(roles) - 1)], cfg.segmenter,
                                   clock=lambda: 0.0, quality=cfg.quality)
            scored, speech = policy.split(stream.feed(samples) + stream.finish())
            events = [speech_event(u) for u in speech]
            # As live: an utterance too poor to count is read on the audio path alone.
            words = [u.insufficient is None for u in scored] if encoder.reads_words else None
            for utt, reading in zip(scored, encoder.encode([u.audio for u in scored], words=words)):
                if reading is None:
                    skipped += 1
                    continue
                utt.embedding, utt.text_embedding, utt.transcript = (reading.embedding, reading.text_embedding,
                                                                     reading.transcript)
                events.append(scorer.score(utt).event(transcript=args.transcripts))
            for event in sorted(events, key=lambda e: e["seq"]):
                if writer is None:
                    row = {"file": str(path), **{k: event[k] for k in ("station", "role", "start", "end",
                                                                       "duration")},
                           "scores": event.get("scores"),  # null: a role that is not scored
                           "parts": event.get("parts"),    # each path's own scores
                           "insufficient": event.get("insufficient"), "quality": event.get("quality")}
                    if "transcript" in event:
                        row["transcript"] = event["transcript"]
                    print(json.dumps(row, ensure_ascii=False))
                else:
                    writer.writerow(csv_row([str(path), event["station"], event["role"]], event, names))
        sys.stdout.flush()
    if skipped:
        log.warning("%d utterances shorter than the minimum were skipped", skipped)
    return 1 if failed else 0


# ---- the service: run the stages, export the history

CONFIG_ARG = arg("--config", default="config.toml", help="configuration file (default: %(default)s)")
STAGES = {
    "run": (("capture", "encode", "serve"), "run the daemon: every stage in one process"),
    "capture": (("capture",), "capture and segment audio; push utterances to the gateway ([stages] utterances)"),
    "encode": (("encode",), "embed utterances as one worker of the gateway's encode fleet ([stages] workers)"),
    "serve": (("serve",), "score, record and publish (WebSocket, history, metrics); takes /ingest audio"),
}


def _register_stage(name: str, stages: tuple[str, ...], help_text: str) -> None:
    def handler(args) -> int:
        from daemon.notify import setup_logging
        from daemon.service import run_service

        setup_logging("DEBUG" if args.verbose >= 2 else "INFO")
        return run_service(args.config, stages)
    command(name, help_text, CONFIG_ARG)(handler)


for _name, (_stages, _help) in STAGES.items():
    _register_stage(_name, _stages, _help)


@command("history", "utterance, visit and alert history: `emoclapd history export --since ... --until ...`",
         arg("action", choices=("export",), help="what to do with the history"),
         CONFIG_ARG,
         arg("--since", help="ISO 8601 time (UTC unless a zone is given) or Unix seconds"),
         arg("--until", help="end of the range (exclusive), same forms"),
         arg("--station", help="only this station"),
         arg("--visits", action="store_true",
             help="export closed customer visits (by start time) instead of utterances"),
         arg("--alerts", action="store_true",
             help="export alert events (fired and cleared, by time) instead of utterances"),
         arg("--format", default="csv", choices=("csv", "jsonl"), help="output format (default: csv)"),
         arg("--output", "-o", help="file to write (default: standard output)"))
def history_command(args) -> int:
    from daemon.history import History, HistoryError, export, parse_time

    try:
        cfg = load_config(args.config)
        since = parse_time(args.since, "--since") if args.since else None
        until = parse_time(args.until, "--until") if args.until else None
        if args.visits and args.alerts:
            raise HistoryError("--visits and --alerts: give one of them")
        history = History(cfg.history.path)
        out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
        try:
            select = history.visits if args.visits else history.alerts if args.alerts else history.events
            n = export(select(since, until, args.station), out, args.format, visits=args.visits,
                       alerts=args.alerts)
        finally:
            if args.output:
                out.close()
    except (ConfigError, HistoryError, OSError) as exc:
        print(f"emoclapd history: {exc}", file=sys.stderr)
        return 2
    print(f"exported {n} {'visits' if args.visits else 'alerts' if args.alerts else 'utterances'}",
          file=sys.stderr)
    return 0


@command("enroll", "enrol a staff member's voice, so auto stations recognise them as staff",
         arg("name", nargs="?", help="the staff member's name"),
         arg("files", nargs="*", metavar="FILE", help="recordings of that one person (at least 3 s of speech)"),
         CONFIG_ARG,
         arg("--list", action="store_true", help="list enrolled staff"),
         arg("--remove", metavar="NAME", help="forget a staff member's voiceprint"))
def enroll_command(args) -> int:
    from daemon.speakers import SpeakerEncoder, SpeakerError, VoiceprintStore, enroll

    cfg = load_config(args.config) if Path(args.config).is_file() else score_config(None)
    sp = cfg.speakers
    store = VoiceprintStore(sp.voiceprints)
    if args.list:
        for row in store.list():
            print(f"{row['name']}\t{row['speech_s']:.1f} s\t{', '.join(row['files'])}")
        return 0
    if args.remove:
        if not store.remove(args.remove):
            print(f"emoclapd enroll: {args.remove!r} is not enrolled", file=sys.stderr)
            return 1
        print(f"removed {args.remove}", file=sys.stderr)
        return 0
    if not args.name or not args.files:
        print("emoclapd enroll: give NAME and at least one FILE (or --list, --remove NAME)", file=sys.stderr)
        return 2
    try:
        vp, seconds = enroll(args.name, args.files, SpeakerEncoder(sp.encoder), cfg.segmenter,
                             sp.min_speech_s, sp.min_agreement)
    except SpeakerError as exc:
        print(f"emoclapd enroll: {exc}", file=sys.stderr)
        return 2
    store.put(args.name, vp, seconds, [str(f) for f in args.files])
    print(f"enrolled {args.name}: {seconds:.1f} s of speech from {len(args.files)} file(s) in {store.path}"
          + ("" if sp.enabled else "; set [speakers] enabled = true for auto stations to use it"),
          file=sys.stderr)
    return 0


@command("triton-repository", "write a Triton model repository serving the bundle's audio encoder "
         "(onnxruntime backend, dynamic batching) for [encoder] backend = \"triton\"",
         arg("bundle", metavar="BUNDLE", help="model bundle folder"),
         arg("out", metavar="OUT", help="repository folder (created; OUT/MODEL must not exist)"),
         arg("--model", default="emoclap_audio", help="model name (default: %(default)s)"),
         arg("--max-batch", type=int, default=32, help="max_batch_size (default: %(default)s)"),
         arg("--preferred", default="4,8,16",
             help="preferred batch sizes, comma-separated; '' for none (default: %(default)s)"),
         arg("--queue-delay-us", type=int, default=2000,
             help="max_queue_delay_microseconds (default: %(default)s)"),
         arg("--instances", type=int, default=1, help="model instances (default: %(default)s)"),
         arg("--kind", default="KIND_GPU", help="instance kind, KIND_GPU or KIND_CPU (default: %(default)s)"))
def triton_repository_command(args) -> int:
    from daemon.triton_repository import RepositoryError, RepositoryOptions, parse_sizes, write_repository

    try:
        options = RepositoryOptions(max_batch=args.max_batch, preferred=parse_sizes(args.preferred),
                                    queue_delay_us=args.queue_delay_us, instances=args.instances,
                                    kind=args.kind, model=args.model)
        bundle = load_bundle(args.bundle)
        folder = write_repository(bundle, args.out, options)
    except (RepositoryError, ImportError) as exc:
        hint = "; install the triton extra (pip install 'emoclap[triton]')" if isinstance(exc, ImportError) else ""
        print(f"emoclapd triton-repository: {exc}{hint}", file=sys.stderr)
        return 2
    print(f"wrote {folder} (bundle {bundle.hash[:12]}); serve it with tritonserver --model-repository "
          f"{Path(args.out).resolve()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
