"""The daemon's life: start the stages, serve, reload, and drain on SIGTERM.

`emoclapd run` starts all three stages in one process over inproc:// links;
`capture`, `encode` and `serve` start one each, linked over ipc:// or tcp://. The
same `Service` does both: it only skips the stages it was not asked to run. Either way
the serve stage's broker hands utterances to the encode workers that joined it.

Shutdown order (SIGTERM/SIGINT): capture stops and flushes its segmenters, ingest
sessions close and flush, the broker has every utterance it accepted encoded (or
counted dropped) and sends `eos`, this process's encode worker leaves, the serve stage
writes and publishes everything up to it, then clients are closed with 1001 and the
history is checkpointed.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from .capture import SourceThread, piece_samples
from .sources import build_sources, check_files
from .config import Config, ConfigError, load_config
from .notify import notify, watchdog_interval

log = logging.getLogger("emoclapd")

STAGES = ("capture", "encode", "serve")


@dataclass
class Parts:
    """What the running stages hold, for shutdown and for tests."""
    sources: list[SourceThread] = field(default_factory=list)
    worker: object = None
    batcher: object = None
    broker: object = None  # the serve stage's broker, which the encode workers join
    serve: object = None  # daemon.serve.ServeStage
    floor: object = None  # daemon.floor.Floor: what the server reads
    server: object = None
    history: object = None
    bank: object = None


def open_encoder(cfg: Config, bundle):
    from .batcher import Batcher
    from .backends import audio_encoder
    from .encoder import TextEncoder
    from .transcriber import utterance_reader
    from .worker import EncodeWorker, ObservedEncoder

    encoder = audio_encoder(cfg, bundle)  # [encoder] backend: ONNX Runtime or Triton
    text = (TextEncoder(bundle, cfg.provider, cfg.encoder.threads)
            if cfg.transcripts.enabled and bundle.transcriber is not None else None)
    reader = utterance_reader(bundle, encoder, text, cfg.transcripts.enabled and text is not None,
                              cfg.provider, cfg.encoder.threads)
    observed = ObservedEncoder(reader)
    batcher = Batcher(observed, batcher_options(cfg, observed.encoder))
    return EncodeWorker(cfg, batcher, observed), batcher


def batcher_options(cfg: Config, encoder):
    """Batches no larger than the encoder's rows per call: an int8 encoder runs one
    utterance per call (batch mates would change its scores), and a batch's utterances
    are published together, so a larger batch would only make the first wait for the rest."""
    from .batcher import BatcherOptions

    rows = min(cfg.encoder.max_batch, getattr(encoder, "rows_per_call", cfg.encoder.max_batch))
    return BatcherOptions(rows, cfg.encoder.max_wait_ms)


def open_bank(cfg: Config, bundle):
    """The prompt bank, loaded (every sentence not yet cached embedded), not yet watching."""
    from .encoder import TextEncoder
    from .prompt_bank import PromptBank, PromptBankOptions

    Path(cfg.cache).parent.mkdir(parents=True, exist_ok=True)
    return PromptBank(Path(cfg.prompts), TextEncoder(bundle, cfg.provider, cfg.encoder.threads),
                      PromptBankOptions(cache=cfg.cache))


class Service:
    def __init__(self, cfg: Config, stages=STAGES, config_path: str | None = None,
                 stream_factory=None, drain_timeout_s: float = 30.0):
        self.cfg = cfg
        self.stages = tuple(stages)
        self.config_path = config_path
        self.stream_factory = stream_factory
        self.piece_samples = 0  # the bundle's piece length for capture and ingest (daemon.capture.piece_samples)
        self.drain_timeout_s = drain_timeout_s
        self.parts = Parts()
        self.stop_event: asyncio.Event | None = None
        self.ready = threading.Event()
        self._reload_lock: asyncio.Lock | None = None
        self._config_mtime = self._mtime()

    # ---- start
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP")))
        try:
            await self.start()
            notify("READY=1")
            notify(f"STATUS=running {', '.join(self.stages)}")
            self.ready.set()
            tasks = [asyncio.create_task(self._watchdog()), asyncio.create_task(self._watch_config())]
            await self.stop_event.wait()
            for task in tasks:
                task.cancel()
        finally:
            notify("STOPPING=1")
            await self.stop()
        return 0

    async def start(self) -> None:
        from emoclap.bundle import load_bundle

        cfg, p = self.cfg, self.parts
        for warning in cfg.privacy.policy().warnings():
            log.warning("%s", warning)
        # Checked first: a missing replay file, then a bad bundle, stops start-up before anything runs.
        if "capture" in self.stages:
            check_files(cfg)
        # Hashing and checking the bundle takes a few hundred ms: not on the event loop.
        bundle = await asyncio.to_thread(load_bundle, cfg.bundle) if {"encode", "serve"} & set(self.stages) else None
        self.piece_samples = piece_samples(cfg, bundle)
        sources = build_sources(cfg, self.stream_factory, self.piece_samples) if "capture" in self.stages else []
        if "serve" in self.stages:
            await self._start_serve(bundle)
        if "encode" in self.stages:
            p.worker, p.batcher = await asyncio.to_thread(open_encoder, cfg, bundle)  # ONNX sessions: seconds
            p.worker.start()
        self._start_sources(sources)

    async def _start_serve(self, bundle) -> None:
        from emoclap.scoring import Scoring

        from .broadcaster import Broadcaster
        from .broker import Broker
        from .floor import Floor, Limits, Progress
        from .handoff import ToLoop
        from .history import History
        from .history_writer import HistoryWriter
        from .hub import Hub
        from .metrics import Metrics
        from .serve import ServeStage, settings
        from .server import Server
        from .stations import Stations

        cfg, p = self.cfg, self.parts
        # The first load embeds every sentence not yet cached: seconds, off the loop.
        p.bank = await asyncio.to_thread(open_bank, cfg, bundle)
        if cfg.history.enabled:
            p.history = History(cfg.history.path, cfg.history.store_audio)
        st, policy, t = cfg.stages, cfg.privacy.policy(), cfg.transcripts
        metrics = Metrics()
        hub = Hub(cfg.server.client_queue, on_slow=metrics.clients_closed.inc, on_sent=metrics.fanout.observe)
        stations = Stations(cfg.stations, metrics, cfg.server.ended_station_ttl_s,
                            agent_quiet_s=max(1.0, 5 * st.status_interval_s))
        scoring = Scoring(p.bank, settings(cfg), cfg.alerts, policy, keep_transcript=t.publish or t.store)
        writer = HistoryWriter(p.history, metrics, store_transcripts=t.store)
        broadcaster = Broadcaster(hub, metrics, cfg.webhook, publish_transcripts=t.publish)
        progress, to_serve = Progress(), ToLoop(asyncio.get_running_loop(), st.hwm)
        p.serve = ServeStage(cfg, p.bank, scoring, writer, broadcaster, stations, progress, metrics, to_serve)
        p.serve.start()
        # The bank reloads on its own thread; the serve stage hears of it on the loop.
        p.bank.subscribe(functools.partial(asyncio.get_running_loop().call_soon_threadsafe, p.serve.prompts_changed))
        p.bank.start()
        p.broker = Broker(cfg, metrics, to_serve, consumed=lambda: progress.settled)
        p.broker.start()
        limits = Limits(cfg.server.late_after_s,
                        silence_after_s=max(1.0, 5 * st.status_interval_s, 2 * st.heartbeat_interval_s))
        p.floor = Floor(limits, stations, scoring, p.bank, policy, writer, broadcaster, progress, p.broker)
        p.server = Server(cfg, p.floor, stations, hub, metrics, self.piece_samples)
        await p.server.start()

    def _start_sources(self, sources: list[SourceThread]) -> None:
        self.parts.sources = sources
        for source in sources:
            source.start()

    def _stop_sources(self) -> None:
        for source in self.parts.sources:
            source.stop()
        for source in self.parts.sources:
            source.join(timeout=10)
        self.parts.sources = []

    # ---- running
    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None:
            return
        while True:
            threads = [t for t in (self.parts.worker, self.parts.broker) if t is not None]
            if all(t.is_alive() for t in threads):  # a dead stage stops the pings
                notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _mtime(self) -> float | None:
        try:
            return os.stat(self.config_path).st_mtime if self.config_path else None
        except OSError:
            return None

    async def _watch_config(self) -> None:
        while self.config_path:
            await asyncio.sleep(1.0)
            mtime = self._mtime()
            if mtime is not None and mtime != self._config_mtime:
                await self.reload("configuration file changed")

    async def reload(self, why: str) -> None:
        """Re-read prompts and configuration; a bad file leaves everything as it was."""
        self._reload_lock = self._reload_lock or asyncio.Lock()
        async with self._reload_lock:  # SIGHUP and the file watcher may coincide
            await self._reload(why)

    async def _reload(self, why: str) -> None:
        notify("RELOADING=1")
        log.info("reloading (%s)", why)
        self._config_mtime = self._mtime()
        if self.parts.bank is not None:
            try:
                await asyncio.to_thread(self.parts.bank.reload)  # embeds new sentences
            except Exception as exc:  # noqa: BLE001 - the bank keeps its last good state
                log.error("prompts: %s", exc)
        if self.config_path:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                log.error("%s; keeping the running configuration", exc)
            else:
                await self._apply(new)
        notify("READY=1")

    async def _apply(self, new: Config) -> None:
        """Apply what a reload may change, each part taking the new values whole; the rest
        waits for a restart. No Config is edited: this one replaces the running one."""
        old = self.cfg
        fixed = [name for name in ("bundle", "provider", "server", "stages", "history", "encoder")
                 if getattr(new, name) != getattr(old, name)]
        if fixed:
            log.warning("changes to %s take effect after a restart", ", ".join(fixed))
        capture = "capture" in self.stages and (new.stations, new.segmenter) != (old.stations, old.segmenter)
        sources = None
        if capture:
            try:
                sources = build_sources(replace(old, stations=new.stations, segmenter=new.segmenter,
                                                quality=new.quality), self.stream_factory,
                                        self.piece_samples)
            except ConfigError as exc:
                log.error("%s; keeping the running stations", exc)
        live = replace(old, prompts=new.prompts, rolling=new.rolling, visits=new.visits, alerts=new.alerts,
                       webhook=new.webhook, quality=new.quality,
                       **({"stations": new.stations, "segmenter": new.segmenter} if sources is not None else {}))
        self.cfg = live
        if self.parts.serve is not None:
            await self.parts.serve.configure(live)
        if self.parts.server is not None:
            self.parts.server.configure(live)
        if new.quality != old.quality:
            for source in self.parts.sources:
                source.set_quality(new.quality)
            log.info("quality thresholds changed: applied to the next utterances")
        if sources is not None:
            log.info("stations changed: restarting capture")
            await asyncio.to_thread(self._stop_sources)
            self._start_sources(sources)

    # ---- stop
    async def stop(self) -> None:
        p = self.parts
        log.info("stopping: draining capture, encoder and serve stage")
        if p.server is not None:
            p.server.stopping = True
        if p.bank is not None:  # re-embedding prompts now would only take the CPU from the drain
            await asyncio.to_thread(p.bank.stop)
        await asyncio.to_thread(self._stop_sources)
        if p.server is not None:
            await p.server.stop_ingest()
        if p.broker is not None:  # the workers (this process's too) finish what it accepted
            p.broker.drain(self.drain_timeout_s)
            await asyncio.to_thread(p.broker.join)  # it gives up once the workers stop answering
            if not await _wait(p.serve.progress.eos, 5.0):
                log.error("the serve stage did not see the end of the stream in time")
        if p.worker is not None:
            p.worker.drain()
            await asyncio.to_thread(p.worker.join, self.drain_timeout_s)
        if p.serve is not None:
            await p.serve.close_visits()
        if p.server is not None:
            await p.server.close()
        if p.serve is not None:
            await p.serve.close()
        if p.batcher is not None:
            await asyncio.to_thread(p.batcher.close)
        if p.bank is not None:
            await asyncio.to_thread(p.bank.close)
        if p.history is not None:
            p.history.close()
        if p.server is not None:
            log.info("stopped: %s", accounting_line(p.server.metrics.accounting(),
                                                    p.history.written if p.history is not None else None))
        else:
            log.info("stopped")


def accounting_line(totals: dict, stored: int | None) -> str:
    """The daemon's life in one line of its log: where every utterance cut went."""
    dropped = totals["dropped"]
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(dropped.items())) or "none"
    line = (f"{totals['segmented']} utterance(s) segmented, {totals['published']} published, "
            f"{totals['speech']} speech only, {sum(dropped.values())} dropped ({reasons})")
    return line + (f", {stored} stored" if stored is not None else ", history off")


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


def run_service(config_path: str, stages=STAGES) -> int:
    """Entry point of `emoclapd run|capture|encode|serve`; config errors exit 2."""
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    if "capture" in stages and not cfg.stations and stages != STAGES:
        log.error("%s: stations: none configured, nothing to capture", config_path)
        return 2
    for stage, key in (("capture", "utterances"), ("encode", "workers")):
        endpoint = getattr(cfg.stages, key)
        if stage in stages and "serve" not in stages and endpoint.startswith("inproc://"):
            log.error("%s: stages.%s: %s only links stages in one process; `emoclapd %s` needs the "
                      "gateway's ipc:// or tcp:// endpoint", config_path, key, endpoint, stage)
            return 2
    from emoclap.bundle import BundleError
    from .encoder import EncoderError
    from emoclap.prompts import PromptError

    try:
        return asyncio.run(Service(cfg, stages, config_path).run())
    except (ConfigError, BundleError, EncoderError, PromptError) as exc:
        log.error("%s", exc)
        return 2
    except Exception as exc:  # noqa: BLE001 - start-up failures: one line, not a trace
        log.error("cannot start: %s", exc)
        return 1
