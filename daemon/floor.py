"""The floor: the read model that the HTTP server and `/ws` read.

Everything a client or a health check asks of the serve stage comes from here: the
greeting with the prompt set, stations, active alerts and open visits; the rolling
snapshot; what makes the service degraded; the counts. It reads the parts through
their read methods and writes none of them, so the server holds no other part.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from emoclap import scorestream

from .metrics import RecentLatency

MAX_NAMED_PROMPT_ERRORS = 20


@dataclass
class Progress:
    """What the serve stage has done, kept by it and read here (and by the broker)."""
    received: int = 0  # embeddings taken off the link
    settled: int = 0  # ... and published or dropped: the broker's backlog counts the rest
    latency: RecentLatency = field(default_factory=lambda: RecentLatency(60.0))  # closing → published
    eos: asyncio.Event = field(default_factory=asyncio.Event)  # the encode stage's end of stream


@dataclass(frozen=True)
class Limits:
    late_after_s: float  # p99 closing → published above this: "scores late"
    silence_after_s: float  # no word from the encode stage this long: degraded


@dataclass(frozen=True)
class Floor:
    limits: Limits
    stations: object  # daemon.stations.Stations
    scoring: object  # emoclap.scoring.Scoring
    bank: object  # daemon.prompt_bank.PromptBank
    policy: object  # emoclap.privacy.PrivacyPolicy
    writer: object  # daemon.history_writer.HistoryWriter
    broadcaster: object  # daemon.broadcaster.Broadcaster
    progress: Progress
    fleet: object  # daemon.broker.Broker, which hears the encode workers

    @property
    def published(self) -> int:
        return self.broadcaster.published

    def hello(self) -> dict:
        return scorestream.hello(self.bank.emotions.values(), self.stations.listing(), self.bank.errors,
                                 self.policy.scored_roles, self.scoring.active_alerts(),
                                 self.scoring.open_visits())

    def rolling(self, subset: set[str] | None = None) -> dict:
        return scorestream.rolling(time.time(), self.scoring.snapshots(), self.stations.states(), subset)

    def station_states(self) -> dict[str, str]:
        return self.stations.states()

    def fleet_snapshot(self) -> dict:
        return self.fleet.snapshot()

    def draining(self) -> int | None:
        return self.fleet.draining()

    def refresh_metrics(self) -> None:
        """The fleet's gauges brought current for a scrape (the broker also does it 4 × a second)."""
        self.fleet.update_metrics()

    def problems(self) -> list[str]:
        """What /healthz reports as making the service degraded."""
        out = self.stations.problems()
        errors = sorted(self.bank.errors.values())
        # Each file by name with its reason (the message names file and line), so whoever
        # edits prompts sees why an emotion is missing; bounded, the count always whole.
        out += [f"prompt file not in use: {e}" for e in errors[:MAX_NAMED_PROMPT_ERRORS]]
        if len(errors) > MAX_NAMED_PROMPT_ERRORS:
            out.append(f"{len(errors) - MAX_NAMED_PROMPT_ERRORS} more prompt file(s) not in use "
                       f"({len(errors)} in all)")
        latency, late_after_s = self.progress.latency, self.limits.late_after_s
        late = latency.p99(time.monotonic())
        if late is not None and late[0] > late_after_s:
            out.append(f"scores late: p99 {late[0]:.2f} s from an utterance closing to its scores over the "
                       f"last {latency.window_s:.0f} s ({late[1]} utterances; server.late_after_s "
                       f"{late_after_s:g})")
        out += [p for p in (self.writer.problem(), self.broadcaster.problem()) if p]
        silent = time.monotonic() - self.fleet.last_worker
        if silent > self.limits.silence_after_s:
            out.append(f"no word from the encode stage for {silent:.0f} s")
        return out + self.fleet.problems(self.stations.any_online())
