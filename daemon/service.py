"""The daemon's life: start the stages, serve, reload, and drain on SIGTERM.

`emoclapd run` starts all three stages in one process over inproc:// links;
`capture`, `encode` and `serve` start one each, linked over ipc:// or tcp://. The
same `Service` does both: it only skips the stages it was not asked to run. Either way
the serve stage's broker hands utterances to the encode workers that joined it.

Shutdown order (SIGTERM/SIGINT): capture stops and flushes its segmenters, ingest
sessions close and flush, the broker has every utterance it accepted encoded (or
counted dropped) and sends `eos`, this process's encode worker leaves, the publisher writes and publishes everything up to it, then clients
are closed with 1001 and the history is checkpointed.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from .capture import SourceThread
from .sources import build_sources
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
    publisher: object = None
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


def open_bank(cfg: Config, bundle, on_change):
    from .encoder import TextEncoder
    from .prompt_bank import PromptBank, PromptBankOptions

    Path(cfg.cache).parent.mkdir(parents=True, exist_ok=True)
    bank = PromptBank(Path(cfg.prompts), TextEncoder(bundle, cfg.provider, cfg.encoder.threads),
                      PromptBankOptions(cache=cfg.cache))
    bank.subscribe(on_change)
    return bank.start()


class Service:
    def __init__(self, cfg: Config, stages=STAGES, config_path: str | None = None,
                 stream_factory=None, drain_timeout_s: float = 30.0):
        self.cfg = cfg
        self.stages = tuple(stages)
        self.config_path = config_path
        self.stream_factory = stream_factory
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
        # Built (and checked) first: a missing replay file stops start-up before anything runs.
        sources = build_sources(cfg, self.stream_factory) if "capture" in self.stages else []
        bundle = load_bundle(cfg.bundle) if {"encode", "serve"} & set(self.stages) else None
        if "serve" in self.stages:
            await self._start_serve(bundle)
        if "encode" in self.stages:
            p.worker, p.batcher = open_encoder(cfg, bundle)
            p.worker.start()
        self._start_sources(sources)

    async def _start_serve(self, bundle) -> None:
        from .broker import Broker
        from .history import History
        from .hub import Hub
        from .metrics import Metrics
        from .publisher import Publisher
        from .server import Server

        cfg, p = self.cfg, self.parts
        loop = asyncio.get_running_loop()

        def changed(*_):  # the bank calls this from whichever thread reloaded it
            if p.publisher is not None:
                loop.call_soon_threadsafe(p.publisher.prompts_changed)

        # The first load embeds every sentence not yet cached: seconds, off the loop.
        p.bank = await asyncio.to_thread(open_bank, cfg, bundle, changed)
        if cfg.history.enabled:
            p.history = History(cfg.history.path, cfg.history.store_audio)
        metrics = Metrics()
        hub = Hub(cfg.server.client_queue, on_slow=metrics.clients_closed.inc, on_sent=metrics.fanout.observe)
        p.publisher = Publisher(cfg, p.bank, metrics, p.history, hub)
        p.publisher.start()
        p.broker = Broker(cfg, metrics)
        p.broker.consumed = lambda: p.publisher.settled
        p.publisher.fleet = p.broker
        p.broker.start()
        p.server = Server(cfg, p.publisher, hub, metrics)
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
        old = self.cfg
        fixed = [name for name in ("bundle", "provider", "server", "stages", "history", "encoder")
                 if getattr(new, name) != getattr(old, name)]
        if fixed:
            log.warning("changes to %s take effect after a restart", ", ".join(fixed))
        old.prompts, old.rolling, old.visits = new.prompts, new.rolling, new.visits
        if self.parts.publisher is not None:
            self.parts.publisher.set_half_life(new.rolling.half_life_s)
            if (new.alerts, new.webhook) != (old.alerts, old.webhook):
                log.info("alert rules or webhook changed: applied now")
                await self.parts.publisher.set_alerts(new.alerts, new.webhook)
        old.alerts, old.webhook = new.alerts, new.webhook
        if new.quality != old.quality:  # frozen options: each stream swaps them whole
            old.quality = new.quality
            streams = [st for source in self.parts.sources for st in list(source.streams.values())]
            if self.parts.server is not None:
                streams += [s.stream for s in self.parts.server.ingest_sessions.values() if s.stream]
            for stream in streams:
                stream.quality = new.quality
            log.info("quality thresholds changed: applied to the next utterances")
        if "capture" in self.stages and (new.stations != old.stations
                                         or new.segmenter != old.segmenter):
            try:
                sources = build_sources(replace(old, stations=new.stations, segmenter=new.segmenter),
                                        self.stream_factory)
            except ConfigError as exc:
                log.error("%s; keeping the running stations", exc)
                return
            log.info("stations changed: restarting capture")
            await asyncio.to_thread(self._stop_sources)
            old.stations, old.segmenter = new.stations, new.segmenter
            self._start_sources(sources)

    # ---- stop
    async def stop(self) -> None:
        p = self.parts
        log.info("stopping: draining capture, encoder and publisher")
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
            if not await _wait(p.publisher.eos, 5.0):
                log.error("publisher did not see the end of the stream in time")
        if p.worker is not None:
            p.worker.drain()
            await asyncio.to_thread(p.worker.join, self.drain_timeout_s)
        if p.publisher is not None:
            await p.publisher.close_visits()
        if p.server is not None:
            await p.server.close()
        if p.publisher is not None:
            await p.publisher.close()
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
