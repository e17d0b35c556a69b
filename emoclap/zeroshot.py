"""Zero-shot bipolar scores: pole vectors from prompt sentences, and scores from them.

One recipe for the runtime (the daemon's prompt bank), the trainer's evaluation and
validation, and export checks: an emotion's pole vector is the mean of its sentences'
unit embeddings, normalised again (open_clip's zero-shot classifier), and a score is
the probability of the positive pole, softmax(s·[a·n, a·p] + [0, bias])[1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np

from emoclap.prompts import Emotion


def unit(v: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to length 1; zero vectors stay zero."""
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-12)


def pole_vector(sentence_embeddings: np.ndarray) -> np.ndarray:
    """[D] unit vector: the mean of the sentences' unit embeddings, normalised again."""
    return unit(unit(np.atleast_2d(sentence_embeddings)).mean(axis=0))


def pole_sentences(emotion: Emotion, languages: Iterable[str] | None) -> tuple[list[str], list[str]]:
    """(negative, positive) sentences in the given languages (all when None), file order."""
    langs = None if languages is None else tuple(languages)
    return emotion.negative.texts(langs), emotion.positive.texts(langs)


def emotion_poles(emotion: Emotion, languages: Iterable[str] | None,
                  embed: Callable[[list[str]], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(negative, positive) pole vectors; `embed(sentences)` → [n, D] embeddings."""
    negative, positive = pole_sentences(emotion, languages)
    vectors = np.asarray(embed(negative + positive), np.float32)
    return pole_vector(vectors[: len(negative)]), pole_vector(vectors[len(negative):])


@dataclass(frozen=True)
class BankVectors:
    """The scoring state at one moment: K emotions in a fixed order."""
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


def bank_vectors(emotions: Sequence[Emotion], poles: dict[str, tuple[np.ndarray, np.ndarray]],
                 logit_scale: float, dim: int) -> BankVectors:
    """Stack emotions (in the given order) with their pole vectors, each emotion's
    `temperature` (else the model's logit scale) and `bias`."""
    if not emotions:
        return BankVectors.empty(dim)
    return BankVectors(
        names=tuple(e.name for e in emotions),
        negative=np.stack([poles[e.name][0] for e in emotions]).astype(np.float32),
        positive=np.stack([poles[e.name][1] for e in emotions]).astype(np.float32),
        scale=np.array([e.temperature or logit_scale for e in emotions], np.float32),
        bias=np.array([e.bias for e in emotions], np.float32),
        roles=tuple(e.roles for e in emotions))


class HasVectors(Protocol):
    @property
    def vectors(self) -> BankVectors: ...


def bipolar_margins(embeddings: np.ndarray, bank: BankVectors) -> np.ndarray:
    """[n, K] float64 a·p − a·n: what temperature and bias act on (calibration fits them on it)."""
    a = np.atleast_2d(np.asarray(embeddings, np.float64))
    return a @ bank.positive.T.astype(np.float64) - a @ bank.negative.T.astype(np.float64)


def bipolar_scores(embeddings: np.ndarray, bank: BankVectors) -> np.ndarray:
    """[n, K] probabilities of the positive pole: softmax(s·[a·n, a·p] + [0, bias])[1]."""
    margin = bipolar_margins(embeddings, bank)
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
