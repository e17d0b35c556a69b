"""The score step: embedded utterances → scores and per-station rolling scores.

The same object scores live (the serve stage) and offline (`emoclapd score`), so a
file scored offline gets the numbers a live station would.
"""
from __future__ import annotations

from emoclap.record import Scored, Utterance
from emoclap.rolling import RollingScores
from emoclap.zeroshot import BankVectors, HasVectors, utterance_scores


class Scorer:
    def __init__(self, bank: BankVectors | HasVectors, half_life_s: float):
        self.bank = bank
        self.half_life_s = half_life_s
        self.rolling: dict[str, RollingScores] = {}

    def score(self, utt: Utterance) -> Scored:
        if utt.embedding is None:
            raise ValueError(f"{utt.station} seq {utt.seq}: no embedding to score")
        parts, scores = utterance_scores(utt.embedding, utt.text_embedding, self.bank, utt.scoring_role)
        rolling = self.rolling.setdefault(utt.station, RollingScores(self.half_life_s))
        rolling.half_life_s = self.half_life_s  # a reloaded half-life applies from now on
        if utt.insufficient is None:  # an insufficient utterance is sent, never averaged in
            rolling.update(utt.role, utt.time, utt.duration, scores)
        return Scored(utt, scores, rolling.snapshot().get(utt.role, {}), parts)

    def snapshots(self) -> dict[str, dict]:
        return {name: r.snapshot() for name, r in self.rolling.items()}

    def keep_only(self, emotions: set[str]) -> None:
        """After a prompt change: rolling scores of removed emotions go too."""
        for r in self.rolling.values():
            for emotion in {e for per in r.snapshot().values() for e in per} - emotions:
                r.forget(emotion)

