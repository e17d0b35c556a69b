"""The daemon's TOML configuration, read into dataclasses.

Every error names the file and the key (`config.toml: stations[1].channel: expected
integer`), so a typo is fixed in one look; the CLI turns `ConfigError` into exit code 2.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from emoclap.alerts import Rule, RuleError, parse_rules
from emoclap.privacy import PrivacyPolicy
from emoclap.quality import QualityOptions
from emoclap.record import ROLES
from emoclap.segmenter import SegmenterOptions

from .triton_repository import NAME_RE as TRITON_MODEL_RE
from .webhook import WebhookConfig, parse_webhook

SOURCES = ("replay", "device")
PROVIDERS = ("auto", "cpu", "cuda")
ENDPOINT_SCHEMES = ("inproc://", "ipc://", "tcp://")
TOKEN_ENV = "EMOCLAP_TOKEN"
TOKEN_RE = re.compile(r"[!-~]{1,256}")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and key."""


@dataclass
class EncoderConfig:
    max_batch: int = 8
    max_wait_ms: int = 0  # 0: a batch is what queued while the last one ran (bench/RESULTS.md, pieces)
    threads: int = 0  # ONNX Runtime intra-op threads; 0: one per physical core
    backend: str = "onnxruntime"  # or "triton": the model runs in a Triton server (daemon.triton)
    triton_url: str = "127.0.0.1:8001"  # Triton's gRPC endpoint, HOST:PORT
    triton_model: str = "emoclap_audio"
    triton_timeout_s: float = 10.0  # one request, and each start-up check


@dataclass
class RollingConfig:
    half_life_s: float = 60.0
    interval_s: float = 2.0  # period of the `rolling` snapshot broadcast


@dataclass
class VisitsConfig:
    end_after_s: float = 90.0  # silence on a station that ends a customer visit


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str = ""  # required beyond loopback; EMOCLAP_TOKEN overrides
    max_clients: int = 64
    max_message_bytes: int = 65536  # largest message a client may send
    client_queue: int = 256  # queued messages per client before it is closed
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 20.0
    ingest_max_sessions: int = 16
    ingest_max_frame_bytes: int = 32000  # one binary frame: 1 s of 16 kHz s16le
    ingest_max_rate: float = 1.5  # audio seconds per wall-clock second, sustained
    ingest_burst_s: float = 5.0  # audio seconds a client may send ahead of real time
    ingest_start_timeout_s: float = 10.0  # a connection must send `start` within this
    ingest_max_errors: int = 20  # refused messages in 10 s before an /ingest connection is closed
    ended_station_ttl_s: float = 300.0  # ended ingest/remote stations leave snapshots and metrics
    late_after_s: float = 1.0  # /healthz is degraded while the last minute's p99 publish latency is above it


@dataclass
class HistoryConfig:
    path: str = "var/history.sqlite3"
    store_audio: bool = False
    enabled: bool = True


@dataclass
class PrivacyConfig:
    scored_roles: list[str] = field(default_factory=lambda: ["customer"])  # see emoclap.privacy

    def policy(self) -> PrivacyPolicy:
        return PrivacyPolicy(tuple(dict.fromkeys(self.scored_roles)))


@dataclass
class TranscriptsConfig:
    """The text path: each scored utterance's words, read by the bundle's transcriber.
    Transcripts are personal data: neither published nor stored unless said here."""
    enabled: bool = True   # read words where the bundle has a transcriber (the fused score)
    publish: bool = False  # send each transcript in `utterance` events on /ws
    store: bool = False    # keep each transcript in the history (and its export)

    @property
    def leave_encoder(self) -> bool:
        """Whether transcripts travel past the encode stage at all."""
        return self.enabled and (self.publish or self.store)


@dataclass
class SpeakersConfig:
    """Staff recognised by voice on `auto` stations (shared microphones); see daemon.speakers."""
    enabled: bool = False
    voiceprints: str = "var/voiceprints.sqlite3"  # written by `emoclapd enroll`
    encoder: str = "var/speaker-encoder"  # written by `emoclap-train export-speaker`
    threshold: float = 0.89  # cosine at or above which a voice is staff (bench/speaker_eer.py: EER point)
    min_speech_s: float = 3.0  # enrolment: speech needed after voice activity detection
    min_agreement: float = 0.70  # enrolment: lowest cosine between one speaker's files/segments


@dataclass
class StagesConfig:
    # capture/ingest -> the gateway's broker; inproc: handed over as objects in one process
    utterances: str = "inproc://emoclap-utterances"
    workers: str = "inproc://emoclap-workers"  # the serve stage's broker; encode workers connect
    hwm: int = 64  # messages queued per socket before new ones are dropped
    status_interval_s: float = 1.0
    heartbeat_interval_s: float = 0.5  # broker <-> encode workers
    heartbeat_liveness: int = 3  # missed heartbeats before a peer is dead
    max_attempts: int = 3  # dispatches of one utterance before it is dropped as worker_lost
    request_timeout_s: float = 30.0  # a worker holding work that answers nothing this long is stuck
    broker_queue: int = 256  # utterances waiting for a worker; past it (no worker alive): no_worker
    slow_link_ms: float = 100.0  # a worker whose heartbeat round trip is above it is named in /healthz
    # Pieces of utterances in progress, for a bundle encoded in pieces: "auto" the bundle's
    # length where this process loads it; 0 none; seconds for capture agents elsewhere.
    piece_s: float | str = "auto"


@dataclass
class StationConfig:
    name: str = ""
    source: str = "replay"
    role: str = "auto"
    channel: int | None = None  # one input channel (0-based) ...
    channels: list[int] | None = None  # ... or several, mixed down
    # replay
    file: str = ""
    realtime: bool = True
    loop: bool = False
    # device
    device: str | int | None = None  # name substring or index; default input if unset
    sample_rate: int | None = None  # device rate; 16000 if unset
    block_ms: int = 20
    queue_blocks: int = 200  # blocks buffered between audio callback and segmenter

    def channel_list(self) -> list[int] | None:
        """Input channels to mix into this station; None means all of them."""
        if self.channel is not None:
            return [self.channel]
        return list(self.channels) if self.channels else None


@dataclass
class Config:
    bundle: str = "data/demo-bundle"
    prompts: str = "prompts"
    provider: str = "auto"
    cache: str = "var/prompt-cache.sqlite3"  # prompt embeddings, keyed by bundle hash
    segmenter: SegmenterOptions = field(default_factory=SegmenterOptions)
    quality: QualityOptions = field(default_factory=QualityOptions)  # [quality]: abstain thresholds
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    rolling: RollingConfig = field(default_factory=RollingConfig)
    visits: VisitsConfig = field(default_factory=VisitsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    transcripts: TranscriptsConfig = field(default_factory=TranscriptsConfig)
    speakers: SpeakersConfig = field(default_factory=SpeakersConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    stations: list[StationConfig] = field(default_factory=list)
    alerts: tuple[Rule, ...] = ()  # [[alerts]], parsed by emoclap.alerts
    webhook: WebhookConfig | None = None  # [webhook]: alerts POSTed by daemon.webhook
    source: str = "<defaults>"  # the file it was read from

    def station(self, name: str) -> StationConfig | None:
        return next((s for s in self.stations if s.name == name), None)


_TYPE_WORDS = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        words = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(words)
    if origin is list:
        return f"list of {_describe(typing.get_args(tp)[0])}s"
    return _TYPE_WORDS.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value, tp, key: str):
    """Check `value` against the annotation `tp`; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_describe(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_describe(tp)}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table")
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value}")
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_describe(tp)}")
    return value


RETIRED = {"stages.embeddings": "no longer a setting: the broker hands each result to the serve stage "
                                "inside the gateway's process"}


def _build(cls, table: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source" or cls is not Config}
    kwargs = {}
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else key
        if full in RETIRED:
            raise ConfigError(f"{full}: {RETIRED[full]}; remove it")
        if key not in names:
            raise ConfigError(f"{full}: unknown key (known: {', '.join(sorted(names))})")
        kwargs[key] = _convert(value, hints[key], full)
    if cls is SegmenterOptions and "sample_rate" in kwargs:
        raise ConfigError(f"{prefix}.sample_rate: fixed at 16000, not configurable")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the options' own checks
        key, _, why = str(exc).partition(": ")
        if key in names and why:  # a check that names its field: the full key
            raise ConfigError(f"{prefix}.{key}: {why}") from None
        raise ConfigError(f"{prefix}: {exc}") from None


def _check_choice(value: str, choices, key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")


def _check_positive(obj, key_prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{key_prefix}.{name}: must be greater than 0")


ENCODER_BACKENDS = ("onnxruntime", "triton")
TRITON_URL_RE = re.compile(r"(?P<host>[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>[0-9]{1,5})")


def check_triton_settings(enc: EncoderConfig) -> None:
    """[encoder] backend and the Triton keys (checked whichever backend is chosen, so a
    switch to Triton does not first fail at start-up)."""
    _check_choice(enc.backend, ENCODER_BACKENDS, "encoder.backend")
    match = TRITON_URL_RE.fullmatch(enc.triton_url)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ConfigError("encoder.triton_url: expected HOST:PORT of Triton's gRPC endpoint "
                          f"(e.g. 127.0.0.1:8001, no scheme), got {enc.triton_url[:100]!r}")
    if not TRITON_MODEL_RE.fullmatch(enc.triton_model):
        raise ConfigError("encoder.triton_model: a Triton model name is 1 to 128 letters, digits, "
                          f"'_', '.' or '-', not starting with '.' or '-'; got {enc.triton_model[:140]!r}")
    if not 0 < enc.triton_timeout_s <= 3600:
        raise ConfigError("encoder.triton_timeout_s: expected more than 0 and at most 3600")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate(cfg: Config) -> None:
    _check_choice(cfg.provider, PROVIDERS, "provider")
    _check_positive(cfg.encoder, "encoder", ("max_batch",))
    if cfg.encoder.max_wait_ms < 0:  # 0: a batch is what waited while the last one ran
        raise ConfigError("encoder.max_wait_ms: must be 0 or more")
    if cfg.encoder.threads < 0:
        raise ConfigError("encoder.threads: must be 0 or more")
    check_triton_settings(cfg.encoder)
    _check_positive(cfg.rolling, "rolling", ("half_life_s", "interval_s"))
    _check_positive(cfg.visits, "visits", ("end_after_s",))
    srv = cfg.server
    if not 0 <= srv.port <= 65535:
        raise ConfigError("server.port: expected 0 to 65535")
    _check_positive(srv, "server", ("max_clients", "max_message_bytes", "client_queue",
                                    "ingest_max_sessions", "ingest_max_frame_bytes",
                                    "ingest_max_rate", "ingest_burst_s", "ingest_start_timeout_s", "ingest_max_errors",
                                    "ended_station_ttl_s", "late_after_s"))
    if srv.ingest_max_frame_bytes > srv.max_message_bytes:
        raise ConfigError("server.ingest_max_frame_bytes: must not exceed server.max_message_bytes")
    # An empty variable (a unit's `Environment=EMOCLAP_TOKEN=`) must not erase the file's token.
    srv.token = os.environ.get(TOKEN_ENV) or srv.token
    if srv.token and not TOKEN_RE.fullmatch(srv.token):
        where = TOKEN_ENV if os.environ.get(TOKEN_ENV) else "server.token"
        raise ConfigError(f"{where}: a token is up to 256 printable ASCII characters without spaces "
                          "(clients send it in an HTTP header)")
    if not is_loopback(srv.host) and not srv.token:
        raise ConfigError(f"server.token: required when server.host ({srv.host}) is not a "
                          f"loopback address (or set {TOKEN_ENV})")
    for name in ("utterances", "workers"):
        endpoint = getattr(cfg.stages, name)
        if not endpoint.startswith(ENDPOINT_SCHEMES):
            raise ConfigError(f"stages.{name}: expected an inproc://, ipc:// or tcp:// "
                              f"endpoint, got {endpoint!r}")
    piece = cfg.stages.piece_s
    if piece != "auto" and (isinstance(piece, str) or not 0 <= piece <= 30 or abs(piece * 50 - round(piece * 50)) > 1e-9):
        raise ConfigError(f"stages.piece_s: expected \"auto\", 0 or seconds up to 30 in steps of 0.02, got {piece!r}")
    _check_positive(cfg.stages, "stages", ("hwm", "status_interval_s", "heartbeat_interval_s",
                                           "heartbeat_liveness", "max_attempts", "request_timeout_s",
                                           "broker_queue", "slow_link_ms"))
    for name, top in (("heartbeat_interval_s", 60), ("heartbeat_liveness", 100), ("max_attempts", 100),
                      ("broker_queue", 1_000_000)):  # a dead encode worker must be noticed
        if getattr(cfg.stages, name) > top:
            raise ConfigError(f"stages.{name}: at most {top}")
    if not -1.0 <= cfg.speakers.threshold <= 1.0:
        raise ConfigError("speakers.threshold: expected a cosine between -1 and 1")
    if not -1.0 <= cfg.speakers.min_agreement <= 1.0:
        raise ConfigError("speakers.min_agreement: expected a cosine between -1 and 1")
    _check_positive(cfg.speakers, "speakers", ("min_speech_s",))
    for i, role in enumerate(cfg.privacy.scored_roles):
        _check_choice(role, ROLES, f"privacy.scored_roles[{i}]")
    seen: set[str] = set()
    for i, st in enumerate(cfg.stations):
        key = f"stations[{i}]"
        if not st.name:
            raise ConfigError(f"{key}.name: required")
        if st.name in seen:
            raise ConfigError(f"{key}.name: station {st.name!r} is declared twice")
        seen.add(st.name)
        _check_choice(st.source, SOURCES, f"{key}.source")
        _check_choice(st.role, ROLES, f"{key}.role")
        if st.channel is not None and st.channels is not None:
            raise ConfigError(f"{key}.channels: give either channel or channels, not both")
        for ch in st.channel_list() or []:
            if ch < 0:
                raise ConfigError(f"{key}.channel: must be 0 or more")
        if st.source == "replay" and not st.file:
            raise ConfigError(f"{key}.file: required for a replay station")
        if st.source == "device" and st.file:
            raise ConfigError(f"{key}.file: only for replay stations")
        _check_positive(st, key, ("block_ms", "queue_blocks"))


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Relative paths are relative to the configuration file's folder."""
    def resolve(p: str) -> str:
        return str(base / p) if p and not Path(p).is_absolute() else p
    cfg.bundle = resolve(cfg.bundle)
    cfg.prompts = resolve(cfg.prompts)
    cfg.cache = resolve(cfg.cache)
    cfg.history.path = resolve(cfg.history.path)
    cfg.speakers.voiceprints = resolve(cfg.speakers.voiceprints)
    cfg.speakers.encoder = resolve(cfg.speakers.encoder)
    for st in cfg.stations:
        st.file = resolve(st.file)
    for name in ("utterances", "workers"):
        endpoint = getattr(cfg.stages, name)
        if endpoint.startswith("ipc://") and not endpoint.startswith("ipc:///"):
            setattr(cfg.stages, name, "ipc://" + resolve(endpoint[len("ipc://"):]))


def parse_config(text: str, source: str = "config.toml", base: Path | None = None) -> Config:
    """Parse TOML text into a checked `Config`; relative paths resolve against `base`."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except RecursionError:  # tomllib recurses once per nesting level
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from None
    try:
        alerts, webhook = table.pop("alerts", []), table.pop("webhook", None)
        cfg = _build(Config, table, "")
        _validate(cfg)
        cfg.alerts = parse_rules(alerts)
        cfg.webhook = None if webhook is None else parse_webhook(webhook)
    except (ConfigError, RuleError, ValueError) as exc:  # the last two name the rule or key
        raise ConfigError(f"{source}: {exc}") from None
    cfg.source = source
    if base is not None:
        _resolve_paths(cfg, base)
    return cfg


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    return parse_config(text, source=str(path), base=path.resolve().parent)
