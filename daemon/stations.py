"""The gateway's station table: every station it knows, with its role, source and state.

Written by the serve stage (the capture agents' status reports, stations first heard of
in an utterance) and by the server (ingest sessions opening and ending); read through
the floor. Runs on the event loop only.
"""
from __future__ import annotations

import time

from .metrics import Metrics

REMOTE_SOURCES = ("ingest", "remote")  # stations a client brought, not the configuration


class Stations:
    def __init__(self, configured, metrics: Metrics, ended_ttl_s: float, agent_quiet_s: float):
        self._table: dict[str, dict] = {}
        self.metrics = metrics
        self.ended_ttl_s = ended_ttl_s
        self.agent_quiet_s = agent_quiet_s  # an online station unreported this long has lost its agent
        self.configured = {s.name for s in configured}
        for s in configured:
            self.register(s.name, s.role, s.source, "starting")

    def configure(self, configured) -> None:
        """A reloaded station list: a configured station never expires."""
        self.configured = {s.name for s in configured}

    def __contains__(self, name: str) -> bool:
        return name in self._table

    def register(self, name: str, role: str, source: str, state: str) -> None:
        entry = self._table.setdefault(name, {"name": name, "role": role, "source": source})
        entry.update(role=role, source=source)
        self.set_state(name, state)

    def set_state(self, name: str, state: str) -> None:
        entry = self._table.setdefault(name, {"name": name, "role": "auto", "source": "remote"})
        if entry.get("state") != state:
            entry["since"] = time.monotonic()
        entry["state"] = state
        self.metrics.set_state(name, state)

    def reported(self, states: dict[str, str]) -> None:
        """A capture agent's status: its stations' states; it is alive."""
        now = time.monotonic()
        for name, state in states.items():
            self.set_state(name, state)
            self._table[name]["reported"] = now

    def expire(self) -> list[str]:
        """Stations that clients brought and that ended long enough ago leave the table
        and the metrics (names are not a resource a client can grow without bound); the
        caller forgets their scores."""
        now = time.monotonic()
        gone = [n for n, s in self._table.items()
                if s["state"] == "ended" and s["source"] in REMOTE_SOURCES
                and now - s.get("since", now) >= self.ended_ttl_s and n not in self.configured]
        for name in gone:
            del self._table[name]
            self.metrics.forget_station(name)
        return gone

    # ---- read by the floor
    def states(self) -> dict[str, str]:
        return {n: s["state"] for n, s in self._table.items()}

    def listing(self) -> list[dict]:
        return [{k: s[k] for k in ("name", "role", "source", "state")} for s in self._table.values()]

    def any_online(self) -> bool:
        return any(s["state"] == "online" for s in self._table.values())

    def problems(self) -> list[str]:
        out = [f"station {n} is {s['state']}" for n, s in self._table.items()
               if s["state"] in ("offline", "failed")]
        # A capture agent reports its stations every status interval while it runs: an
        # online station whose reports stopped has lost its agent (killed, host down, hung).
        now = time.monotonic()
        return out + [f"station {n}: no word from its capture agent for {now - s['reported']:.0f} s"
                      for n, s in self._table.items()
                      if s["state"] == "online" and now - s.get("reported", now) > self.agent_quiet_s]
