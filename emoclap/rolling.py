"""Rolling (smoothed) scores for one station: duration-weighted EMA per role and emotion."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _State:
    score: float
    weight: float  # seconds of speech behind the score, decayed
    count: int
    updated: float


class RollingScores:
    """Old evidence fades by 0.5 ** (dt / half_life_s); each utterance weighs its duration.

    `end_time` is any monotonic clock in seconds (stream time or wall time), used only
    for differences. One instance per station.
    """

    def __init__(self, half_life_s: float):
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s}")
        self.half_life_s = float(half_life_s)
        self._state: dict[str, dict[str, _State]] = {}

    def update(self, role: str, end_time: float, duration: float, scores: dict[str, float]) -> None:
        weight = max(float(duration), 0.0)
        per_role = self._state.setdefault(role, {})
        for name, score in scores.items():
            state = per_role.get(name)
            if state is None:
                per_role[name] = _State(float(score), weight, 1, float(end_time))
                continue
            # An utterance that ends earlier than the last one (reordered) decays nothing.
            dt = max(0.0, end_time - state.updated)
            old = state.weight * 0.5 ** (dt / self.half_life_s)
            total = old + weight
            if total > 0:
                state.score = (state.score * old + float(score) * weight) / total
            state.weight = total
            state.count += 1
            state.updated = max(state.updated, float(end_time))

    def forget(self, emotion: str) -> None:
        """Drop an emotion (its prompt file was removed)."""
        for per_role in self._state.values():
            per_role.pop(emotion, None)

    def snapshot(self) -> dict[str, dict[str, dict[str, float]]]:
        return {role: {name: {"score": s.score, "count": s.count, "updated": s.updated}
                       for name, s in per_role.items()}
                for role, per_role in self._state.items()}
