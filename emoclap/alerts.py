"""Alert rules on rolling scores: the rule table and the per-(rule, station) state machine.

A rule watches one emotion's rolling score (the `rolling` an `utterance` event carries
for its role) and fires once when it reaches a threshold, resting on enough utterances
and past a cool-down. It stays quiet (disarmed) until the score crosses back over the
re-arm line, which emits `cleared` — hysteresis, so a score hovering at the threshold
does not flap. An alert that fired during a customer visit is also cleared when that
visit closes: a store manager is told about a customer who is there, not one who left.

Times are the events' own (`time`: the utterance's wall-clock end), never a clock read
here, so a replay gives the same alerts. Only scored roles have rolling scores, so no
rule ever fires on anything inferred about a role that is not scored (see Lawful use).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from emoclap.prompts import NAME_RE

DIRECTIONS = ("above", "below")
REARM_GAP = 0.05  # default distance of the re-arm line from the threshold
MAX_RULES = 256
MAX_NAME_CHARS = 80
MAX_STATIONS = 1024
MAX_MIN_UTTERANCES = 1_000_000
MAX_COOLDOWN_S = 7 * 86400.0
KEYS = ("name", "emotion", "above", "below", "rearm", "min_utterances", "cooldown_s", "stations")


class RuleError(ValueError):
    """A rule table that cannot be used; the message names the rule (`alerts[2] "buying": ...`)."""


@dataclass(frozen=True)
class Rule:
    name: str
    emotion: str
    direction: str       # "above": fires at score >= threshold; "below": at score <= threshold
    threshold: float
    rearm: float         # re-armed once the score is strictly past this, away from the threshold
    min_utterances: int = 1
    cooldown_s: float = 60.0
    stations: tuple[str, ...] | None = None  # None: every station

    def applies(self, station: str) -> bool:
        return self.stations is None or station in self.stations

    def crossed(self, score: float) -> bool:
        return score >= self.threshold if self.direction == "above" else score <= self.threshold

    def rearmed(self, score: float) -> bool:
        return score < self.rearm if self.direction == "above" else score > self.rearm


def _number(value) -> float | None:
    """A finite int or float (not a bool) as float, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _quoted(name) -> str:
    return json.dumps(name, ensure_ascii=False)


def parse_rule(table, where: str = "alerts[0]") -> Rule:
    """One `[[alerts]]` table; RuleError names the rule (by `where` and its name)."""
    if not isinstance(table, dict):
        raise RuleError(f"{where}: expected a table")
    name = table.get("name")
    named = (f"{where} {_quoted(name)}" if isinstance(name, str) and name.isprintable()
             and 0 < len(name) <= MAX_NAME_CHARS else where)

    def fail(message: str):
        raise RuleError(f"{named}: {message}")

    for key in table:
        if key not in KEYS:
            fail(f"unknown key {_quoted(key)} (known: {', '.join(KEYS)})")
    if not isinstance(name, str) or not name.strip():
        fail("'name' is required: a non-empty string")
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        fail(f"'name' must be at most {MAX_NAME_CHARS} printable characters")
    emotion = table.get("emotion")
    if not isinstance(emotion, str) or not NAME_RE.match(emotion) or len(emotion) > 64:
        fail("'emotion' is required: an emotion name (1-64 lower-case letters, digits and '_', "
             "as its prompt file is named)")
    given = [d for d in DIRECTIONS if d in table]
    if len(given) != 1:
        fail("give exactly one of 'above' or 'below'")
    direction = given[0]
    threshold = _number(table[direction])
    if threshold is None or not 0.0 <= threshold <= 1.0:
        fail(f"{direction!r} must be a finite number in [0, 1]")
    sign = -1.0 if direction == "above" else 1.0
    if "rearm" in table:
        rearm = _number(table["rearm"])
        if rearm is None or not 0.0 <= rearm <= 1.0:
            fail("'rearm' must be a finite number in [0, 1]")
        if (rearm - threshold) * sign <= 0:
            fail(f"'rearm' ({rearm:g}) must be {'below' if direction == 'above' else 'above'} "
                 f"{direction!r} ({threshold:g}): the score must move back past it to re-arm")
    else:
        # may fall outside [0, 1] (above = 0, below = 1): such a rule never re-arms
        rearm = round(threshold + sign * REARM_GAP, 6)
    min_utterances = table.get("min_utterances", 1)
    if (isinstance(min_utterances, bool) or not isinstance(min_utterances, int)
            or not 1 <= min_utterances <= MAX_MIN_UTTERANCES):
        fail(f"'min_utterances' must be an integer from 1 to {MAX_MIN_UTTERANCES}")
    cooldown = _number(table.get("cooldown_s", 60.0))
    if cooldown is None or not 0.0 <= cooldown <= MAX_COOLDOWN_S:
        fail(f"'cooldown_s' must be a finite number of seconds from 0 to {MAX_COOLDOWN_S:g}")
    stations = table.get("stations")
    if stations is not None:
        if not isinstance(stations, list) or not 1 <= len(stations) <= MAX_STATIONS:
            fail(f"'stations' must be a list of 1 to {MAX_STATIONS} station names")
        for i, s in enumerate(stations):
            if not isinstance(s, str) or not s:
                fail(f"'stations[{i}]' must be a non-empty string")
            if s in stations[:i]:
                fail(f"'stations' lists {_quoted(s)} twice")
        stations = tuple(stations)
    return Rule(name, emotion, direction, threshold, rearm, min_utterances, cooldown, stations)


def parse_rules(tables, key: str = "alerts") -> tuple[Rule, ...]:
    """The `[[alerts]]` array of tables; RuleError names the first bad rule."""
    if not isinstance(tables, list):
        raise RuleError(f"{key}: expected an array of tables ([[{key}]])")
    if len(tables) > MAX_RULES:
        raise RuleError(f"{key}: at most {MAX_RULES} rules, got {len(tables)}")
    rules, first = [], {}
    for i, table in enumerate(tables):
        rule = parse_rule(table, f"{key}[{i}]")
        if rule.name in first:
            raise RuleError(f"{key}[{i}] {_quoted(rule.name)}: name already used by {key}[{first[rule.name]}]")
        first[rule.name] = i
        rules.append(rule)
    return tuple(rules)


@dataclass
class _State:
    """One rule on one station and role."""
    armed: bool = True
    fired_at: float | None = None   # event time of the last `fired`, for the cool-down
    active: dict | None = None      # the `fired` event until it is cleared
    value: float = 0.0              # the last observation, for a `cleared` that no utterance caused
    count: int = 0
    seq: int | None = None


class Alerts:
    """Every rule's state on every station. `observe` each published `utterance` event
    (after its visit id is set); the returned `alert` events are to be stored and published."""

    def __init__(self, rules=()):
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._states: dict[tuple[str, str, str], _State] = {}  # (rule, station, role)
        self._last_ms: dict[tuple[str, str], int] = {}  # keeps ids unique per (rule, station)
        self._unknown: set[str] = set()  # rules already reported as naming an unknown emotion

    def observe(self, event) -> list[dict]:
        """Alerts fired or cleared by one event. Anything that is not a sufficient scored
        utterance with numbers where numbers belong is ignored, never an error."""
        if not isinstance(event, dict) or event.get("type") != "utterance" or event.get("insufficient"):
            return []
        station, role, rolling = event.get("station"), event.get("role"), event.get("rolling")
        t = _number(event.get("time"))
        if not (isinstance(station, str) and isinstance(role, str) and isinstance(rolling, dict)) or t is None:
            return []
        seq = event.get("seq") if isinstance(event.get("seq"), int) else None
        visit = event.get("visit") if isinstance(event.get("visit"), str) else None
        out = []
        for rule in self.rules:
            entry = rolling.get(rule.emotion) if rule.applies(station) else None
            if not isinstance(entry, dict):
                continue
            score, count = _number(entry.get("score")), entry.get("count")
            if score is None or isinstance(count, bool) or not isinstance(count, int):
                continue
            state = self._states.setdefault((rule.name, station, role), _State())
            state.value, state.count, state.seq = round(score, 4), count, seq
            if state.armed:
                if (rule.crossed(score) and count >= rule.min_utterances
                        and (state.fired_at is None or t - state.fired_at >= rule.cooldown_s)):
                    state.armed, state.fired_at = False, t
                    state.active = self._fired(rule, station, role, state, t, visit)
                    out.append(dict(state.active))
            elif rule.rearmed(score):
                out.append(self._clear(state, max(t, state.active["time"])))
        return out

    def end_visit(self, visit_event) -> list[dict]:
        """A `closed` visit: alerts fired during it are cleared (at the visit's end) and
        their rules re-armed; cool-downs stay."""
        vid = visit_event.get("visit") if isinstance(visit_event, dict) else None
        if vid is None:
            return []
        end = _number(visit_event.get("end"))
        return [self._clear(s, max(end or 0.0, s.active["time"]))
                for s in self._states.values() if s.active is not None and s.active["visit"] == vid]

    def forget(self, station: str, now: float) -> list[dict]:
        """A station that leaves: its active alerts cleared at `now`, its state dropped."""
        out = []
        for key in [k for k in self._states if k[1] == station]:
            state = self._states.pop(key)
            if state.active is not None:
                out.append(self._clear(state, max(now, state.active["time"])))
        for key in [k for k in self._last_ms if k[1] == station]:
            del self._last_ms[key]
        return out

    def replace(self, rules, now: float) -> list[dict]:
        """New rules (a reloaded configuration). A rule that is unchanged keeps its state
        (armed or not, cool-down, active alert); a rule removed or changed in any way loses
        it, its active alerts cleared at `now`, and a changed rule starts afresh."""
        new = {r.name: r for r in rules}
        kept = {r.name for r in self.rules if new.get(r.name) == r}
        out = []
        for key in [k for k in self._states if k[0] not in kept]:
            state = self._states.pop(key)
            if state.active is not None:
                out.append(self._clear(state, max(now, state.active["time"])))
        self._last_ms = {k: v for k, v in self._last_ms.items() if k[0] in new}
        self._unknown &= kept
        self.rules = tuple(rules)
        return out

    def active(self) -> list[dict]:
        """Alerts fired and not cleared, oldest first (for a client that connects now)."""
        return sorted((dict(s.active) for s in self._states.values() if s.active is not None),
                      key=lambda a: (a["time"], a["id"]))

    def unknown_emotions(self, known) -> list[Rule]:
        """Rules naming an emotion not in `known`, each reported once until its emotion
        comes back (prompt files come and go at run time: not an error, it never fires)."""
        known = set(known)
        missing = [r for r in self.rules if r.emotion not in known and r.name not in self._unknown]
        self._unknown = {r.name for r in self.rules if r.emotion not in known}
        return missing

    def _fired(self, rule: Rule, station: str, role: str, state: _State, t: float,
               visit: str | None) -> dict:
        key = (rule.name, station)
        ms = max(int(t * 1000), self._last_ms.get(key, -1) + 1)
        self._last_ms[key] = ms
        return {"type": "alert", "state": "fired", "id": f"{rule.name}@{station}-{ms}", "rule": rule.name,
                "station": station, "role": role, "emotion": rule.emotion, "direction": rule.direction,
                "threshold": rule.threshold, "rearm": rule.rearm, "value": state.value,
                "count": state.count, "visit": visit, "time": round(t, 3), "seq": state.seq}

    @staticmethod
    def _clear(state: _State, t: float) -> dict:
        cleared = dict(state.active, state="cleared", value=state.value, count=state.count,
                       time=round(t, 3), seq=state.seq)
        state.active, state.armed = None, True
        return cleared
