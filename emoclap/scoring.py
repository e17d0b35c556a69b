"""Scores, visits and alerts for each utterance as the serve stage takes it.

No I/O and no clock of its own: times come in as arguments and events go out as
values. The serve stage commits what `take` returns before it publishes any of it, so
an event a client saw is always in the history.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emoclap.alerts import Alerts, Rule
from emoclap.privacy import PrivacyPolicy
from emoclap.record import Utterance, speech_event
from emoclap.scorer import Scorer
from emoclap.visits import Visits


@dataclass
class Outcome:
    """One utterance taken: its event, and what it caused."""
    event: dict  # `utterance` (scored) or `speech` (activity only)
    audio: object  # samples stored with a scored utterance; None for speech
    utterance: Utterance
    visits: list[dict] = field(default_factory=list)  # visit events, in order (closed, opened, updated)
    alerts: list[dict] = field(default_factory=list)  # alert events, the closed visit's first

    @property
    def scored(self) -> bool:
        return self.event["type"] == "utterance"

    @property
    def closed_visits(self) -> list[dict]:
        return [v for v in self.visits if v["state"] == "closed"]


@dataclass(frozen=True)
class Settings:
    """What a reload may change without a restart."""
    half_life_s: float
    visit_end_after_s: float


class Scoring:
    def __init__(self, bank, settings: Settings, rules: tuple[Rule, ...], policy: PrivacyPolicy,
                 keep_transcript: bool):
        self.scorer = Scorer(bank, settings.half_life_s)
        self.visits = Visits(settings.visit_end_after_s)
        self.alerts = Alerts(rules)
        self.policy = policy
        self.keep_transcript = keep_transcript  # published or stored: each side strips its own

    def configure(self, settings: Settings) -> None:
        self.scorer.half_life_s = settings.half_life_s
        self.visits.end_after_s = settings.visit_end_after_s

    def take(self, utt: Utterance, embedded: bool) -> Outcome:
        """An utterance from the encode stage. Only an embedding of a role this gateway
        scores is scored; anything else (speech activity, a role another encode stage's
        policy let through) is published as speech. Raises if scoring fails: the caller
        counts it dropped."""
        if embedded and self.policy.scores(utt.role):
            out = Outcome(self.scorer.score(utt).event(transcript=self.keep_transcript), utt.audio, utt)
        else:
            out = Outcome(speech_event(utt), None, utt)
        visit, out.visits = self.visits.observe(out.event)
        if visit is not None:
            out.event["visit"] = visit
        out.alerts = [a for v in out.closed_visits for a in self.alerts.end_visit(v)]
        out.alerts += self.alerts.observe(out.event)
        return out

    def tick(self, now: float) -> tuple[list[dict], list[dict]]:
        """Visits whose silence ran out, and the alerts their end clears."""
        return self._ended(self.visits.tick(now))

    def close_all(self) -> tuple[list[dict], list[dict]]:
        """At shutdown: every open visit closed."""
        return self._ended(self.visits.close_all())

    def _ended(self, closed: list[dict]) -> tuple[list[dict], list[dict]]:
        return closed, [a for v in closed for a in self.alerts.end_visit(v)]

    def forget(self, station: str, now: float) -> list[dict]:
        """A station gone for good: its rolling scores, visit and alerts (cleared)."""
        self.scorer.rolling.pop(station, None)
        self.visits.forget(station)  # closed long ago by the tick: end_after_s < the station TTL
        return self.alerts.forget(station, now)

    def replace_rules(self, rules: tuple[Rule, ...], now: float) -> list[dict]:
        return self.alerts.replace(rules, now)

    def keep_only(self, emotions: set[str]) -> None:
        self.scorer.keep_only(emotions)

    # ---- read by the floor
    def snapshots(self) -> dict[str, dict]:
        return self.scorer.snapshots()

    def active_alerts(self) -> list[dict]:
        return self.alerts.active()

    def open_visits(self) -> list[dict]:
        return self.visits.current()

    def unknown_emotions(self, known) -> list[Rule]:
        return self.alerts.unknown_emotions(known)
