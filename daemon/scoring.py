"""Bipolar emotion scores from an utterance embedding and the prompt bank's pole vectors."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class BankVectors:
    """The prompt bank at one moment: K emotions in a fixed order."""
    names: tuple[str, ...]
    negative: np.ndarray  # [K, D] unit vectors
    positive: np.ndarray  # [K, D] unit vectors
    scale: np.ndarray     # [K] logit scale per emotion
    bias: np.ndarray      # [K] added to the positive pole's logit
    roles: tuple[tuple[str, ...] | None, ...]  # per emotion; None: every role

    def __post_init__(self):
        k = len(self.names)
        if self.negative.shape[0] != k or self.positive.shape != self.negative.shape:
            raise ValueError("pole vectors must be [K, D] for K emotion names")
        if self.scale.shape != (k,) or self.bias.shape != (k,) or len(self.roles) != k:
            raise ValueError("scale, bias and roles need one entry per emotion")

    @classmethod
    def empty(cls, dim: int) -> "BankVectors":
        z = np.zeros((0, dim), np.float32)
        return cls((), z, z.copy(), np.zeros(0, np.float32), np.zeros(0, np.float32), ())


class HasVectors(Protocol):
    @property
    def vectors(self) -> BankVectors: ...


def bipolar_scores(embeddings: np.ndarray, bank: BankVectors) -> np.ndarray:
    """[n, K] probabilities of the positive pole: softmax(s·[a·n, a·p] + [0, bias])[1]."""
    a = np.atleast_2d(np.asarray(embeddings, np.float64))
    margin = a @ bank.positive.T.astype(np.float64) - a @ bank.negative.T.astype(np.float64)
    logit = bank.scale.astype(np.float64) * margin + bank.bias.astype(np.float64)
    # Two-way softmax == logistic of the logit difference; this form never overflows.
    return (0.5 * (1.0 + np.tanh(0.5 * logit))).astype(np.float32)


def score_utterance(embedding: np.ndarray, bank: BankVectors | HasVectors,
                    role: str | None = None) -> dict[str, float]:
    """{emotion: score} for one utterance; emotions whose roles exclude `role` are left out."""
    vectors = bank if isinstance(bank, BankVectors) else bank.vectors
    scores = bipolar_scores(embedding, vectors)[0]
    return {name: float(scores[i]) for i, name in enumerate(vectors.names)
            if role is None or vectors.roles[i] is None or role in vectors.roles[i]}
