"""Whose emotions may be inferred: the policy every stage applies.

Since 2 February 2025 the EU AI Act (Article 5(1)(f)) prohibits inferring the emotions
of people at their workplace, so a store's own staff are not scored by default: their
utterances are still cut and counted (talk time, turn-taking) but never embedded for
emotion, never scored, never stored with scores. `auto` stations (a microphone whose
speaker is unknown) may hear staff too, so they are not scored by default either.
"""
from __future__ import annotations

from dataclasses import dataclass

from emoclap.record import ROLES, Utterance

LEGAL_REASON = ("inferring the emotions of people at their workplace is prohibited in the EU "
                "(AI Act, Article 5(1)(f), in force since 2 February 2025)")


@dataclass(frozen=True)
class PrivacyPolicy:
    scored_roles: tuple[str, ...] = ("customer",)

    def __post_init__(self):
        unknown = [r for r in self.scored_roles if r not in ROLES]
        if unknown:
            raise ValueError(f"scored_roles: unknown role(s) {', '.join(map(repr, unknown))} "
                             f"(expected {', '.join(ROLES)})")

    def scores(self, role: str) -> bool:
        return role in self.scored_roles

    def encodes_early(self, role: str) -> bool:
        """Whether a station of this role may have its utterances encoded while they are
        spoken (emoclap.pieces): a scored role, known before the utterance ends (an auto
        station's role is decided by voice once it has ended)."""
        return role != "auto" and self.scores(role)

    def split(self, utterances: list[Utterance]) -> tuple[list[Utterance], list[Utterance]]:
        """(to be scored, speech activity only)."""
        scored = [u for u in utterances if self.scores(u.role)]
        return scored, [u for u in utterances if not self.scores(u.role)]

    def warnings(self) -> list[str]:
        """What an operator must hear when the policy reaches beyond customers."""
        out = []
        if "staff" in self.scored_roles:
            out.append(f"privacy.scored_roles includes staff: {LEGAL_REASON}; "
                       "make sure this use is lawful where this runs")
        if "auto" in self.scored_roles:
            out.append("privacy.scored_roles includes auto: stations whose speaker is unknown are "
                       f"scored and may include staff; {LEGAL_REASON}")
        return out
