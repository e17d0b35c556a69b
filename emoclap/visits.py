"""Customer visits: per station, from the first customer utterance until a silence.

`Visits` turns the station's `utterance` and `speech` events into `visit` events. A
customer utterance opens a visit; any speech on the station (staff included) keeps it
open and counts towards its talk share; `end_after_s` of silence closes it. Staff speech
alone opens nothing, and only scored customer utterances enter the purchase-intention
trajectory, so a visit never carries anything inferred about staff (see Lawful use).
An `insufficient` customer utterance (emoclap.quality) is counted like staff speech:
talk share only; it neither opens a visit nor enters its count or trajectory.

State is bounded: one open visit per station, running sums instead of the utterance
list; a closed visit is handed to the caller and forgotten.
"""
from __future__ import annotations

from dataclasses import dataclass

INTENTION = "purchase_intention"
OPENER = "customer"  # the role whose speech starts a visit


@dataclass
class _Open:
    station: str
    id: str
    start: float
    end: float
    utterances: int = 0    # customer utterances
    customer_s: float = 0.0
    speech_s: float = 0.0  # every role's speech while the visit is open
    # trajectory: first/last/max and least-squares sums; times are relative to the first
    # start (fixed, unlike `start`) because squares of Unix times swamp the variance in float64
    origin: float = 0.0
    floor: float = float("-inf")  # the station's previous visit's end: visits never overlap
    n: int = 0
    first: float = 0.0
    last: float = 0.0
    best: float = 0.0
    st: float = 0.0
    sy: float = 0.0
    stt: float = 0.0
    sty: float = 0.0
    latest: str = "opened"  # the state of its last `visit` event, for `Visits.current`

    def add(self, event: dict, start: float, end: float) -> None:
        duration = max(0.0, end - start)
        self.start, self.end = max(self.floor, min(self.start, start)), max(self.end, end)
        self.speech_s += duration
        if event["role"] != OPENER:
            return
        self.customer_s += duration  # an insufficient utterance is still speech: talk share
        if event.get("insufficient"):
            return
        self.utterances += 1
        score = (event.get("scores") or {}).get(INTENTION)
        if score is None:
            return
        t = end - self.origin
        self.first = score if self.n == 0 else self.first
        self.best = score if self.n == 0 else max(self.best, score)
        self.last = score
        self.n += 1
        self.st, self.sy, self.stt, self.sty = (self.st + t, self.sy + score, self.stt + t * t,
                                                self.sty + t * score)

    def trajectory(self) -> dict | None:
        if self.n == 0:
            return None
        spread = self.n * self.stt - self.st * self.st
        # a slope needs two distinct times; relative spread guards against rounding noise
        slope = (None if spread <= 1e-9 * max(1.0, self.n * self.stt)
                 else (self.n * self.sty - self.st * self.sy) / spread * 60.0)
        return {"first": round(self.first, 4), "last": round(self.last, 4), "max": round(self.best, 4),
                "slope_per_min": None if slope is None else round(slope, 4), "count": self.n}

    def event(self, state: str) -> dict:
        return {"type": "visit", "state": state, "station": self.station, "visit": self.id,
                "start": round(self.start, 3), "end": round(self.end, 3),
                "duration": round(self.end - self.start, 3), "utterances": self.utterances,
                "talk_share": round(self.customer_s / self.speech_s, 4) if self.speech_s > 0 else None,
                INTENTION: self.trajectory()}


class Visits:
    """Every station's open visit. `observe` each published utterance/speech event in
    order; `tick(now)` closes visits silent for longer than `end_after_s`."""

    def __init__(self, end_after_s: float):
        if not end_after_s > 0:
            raise ValueError(f"end_after_s must be positive, got {end_after_s}")
        self.end_after_s = float(end_after_s)
        self.open: dict[str, _Open] = {}
        self._last_ms: dict[str, int] = {}  # keeps ids unique when start times repeat
        self._last_end: dict[str, float] = {}  # where the station's next visit may start

    def observe(self, event: dict) -> tuple[str | None, list[dict]]:
        """The visit id `event` belongs to (None: no open visit) and the visit events it
        causes: the previous visit `closed` when the silence before it was long enough
        (the tick may not have run yet), then `opened` or `updated`."""
        station, end = event["station"], float(event["time"])
        start = end - max(0.0, float(event.get("duration", 0.0)))
        out = []
        visit = self.open.get(station)
        if visit is not None and start - visit.end > self.end_after_s:
            out.append(self._close(station))
            visit = None
        if visit is None:
            if event["role"] != OPENER or event.get("insufficient"):  # a cough opens nothing
                return None, out
            # A long utterance whose end came after the close may have begun before it.
            first = max(start, self._last_end.get(station, start))
            visit = self.open[station] = _Open(station, self._new_id(station, first), first, end,
                                               origin=start, floor=first)
            visit.add(event, start, end)
            return visit.id, out + [visit.event("opened")]
        visit.add(event, start, end)
        visit.latest = "updated"
        return visit.id, out + [visit.event("updated")]

    def current(self) -> list[dict]:
        """Each open visit's latest `visit` event (for a client that connects mid-visit)."""
        return [v.event(v.latest) for v in self.open.values()]

    def tick(self, now: float) -> list[dict]:
        """`closed` events of visits whose silence exceeded `end_after_s` by `now`."""
        return [self._close(s) for s, v in list(self.open.items()) if now - v.end > self.end_after_s]

    def close_all(self) -> list[dict]:
        """At shutdown: every open visit closed, so none is lost."""
        return [self._close(s) for s in list(self.open)]

    def forget(self, station: str) -> dict | None:
        """A station that leaves the table: its open visit closed (or None)."""
        self._last_ms.pop(station, None)
        self._last_end.pop(station, None)
        return self._close(station) if station in self.open else None

    def _close(self, station: str) -> dict:
        visit = self.open.pop(station)
        self._last_end[station] = visit.end
        return visit.event("closed")

    def _new_id(self, station: str, start: float) -> str:
        ms = max(int(start * 1000), self._last_ms.get(station, -1) + 1)
        self._last_ms[station] = ms
        return f"{station}-{ms}"
