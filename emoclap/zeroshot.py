"""Zero-shot bipolar scores: pole vectors from prompt sentences, and scores from them.

One recipe for the runtime (the daemon's prompt bank), the trainer's evaluation and
validation, and export checks: an emotion's pole vector is the mean of its sentences'
unit embeddings, normalised again (open_clip's zero-shot classifier), and a score is
the probability of the positive pole, softmax(s·[a·n, a·p] + [0, bias])[1].

The same pole vectors score two paths: the audio path's embedding a (how it was said)
and the text path's t, the utterance's transcript through the same text tower as the
prompts (what was said). Each path has its own temperature and bias; the fused score is
σ(w_a·logit_a + w_t·logit_t), a logistic fusion of the two paths' logits (a product of
experts when both weights are 1), and is the audio path's score where there is no
transcript.
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
                  embed: Callable[[list[str]], np.ndarray], dim: int | None = None) -> tuple[np.ndarray, ...]:
    """(negative, positive) pole vectors; `embed(sentences)` → [n, D] embeddings. Where
    `embed` gives [n, D + S] (the text tower's sentence vectors after the `dim` shared-space
    ones), also the text path's (negative, positive) in the sentence space."""
    negative, positive = pole_sentences(emotion, languages)
    vectors = np.asarray(embed(negative + positive), np.float32)
    n = len(negative)
    if dim is None or vectors.shape[1] <= dim:
        return pole_vector(vectors[:n]), pole_vector(vectors[n:])
    shared, sentence = vectors[:, :dim], vectors[:, dim:]
    return (pole_vector(shared[:n]), pole_vector(shared[n:]),
            pole_vector(sentence[:n]), pole_vector(sentence[n:]))


@dataclass(frozen=True)
class BankVectors:
    """The scoring state at one moment: K emotions in a fixed order."""
    names: tuple[str, ...]
    negative: np.ndarray  # [K, D] unit vectors
    positive: np.ndarray  # [K, D] unit vectors
    scale: np.ndarray     # [K] logit scale per emotion (the audio path's)
    bias: np.ndarray      # [K] added to the positive pole's logit (the audio path's)
    roles: tuple[tuple[str, ...] | None, ...]  # per emotion; None: every role
    # The text path's scale and bias, and the fused score's weights; None: scale as the
    # audio path's, bias 0, weights 1.
    text_scale: np.ndarray | None = None
    text_bias: np.ndarray | None = None
    audio_weight: np.ndarray | None = None
    text_weight: np.ndarray | None = None
    # The text path's pole vectors [K, S] in the text tower's own sentence space (where a
    # transcript is compared with the prompt sentences); None: the shared space's.
    text_negative: np.ndarray | None = None
    text_positive: np.ndarray | None = None

    def __post_init__(self):
        k = len(self.names)
        if self.negative.shape[0] != k or self.positive.shape != self.negative.shape:
            raise ValueError("pole vectors must be [K, D] for K emotion names")
        if self.scale.shape != (k,) or self.bias.shape != (k,) or len(self.roles) != k:
            raise ValueError("scale, bias and roles need one entry per emotion")
        for name, default in (("text_scale", self.scale), ("text_bias", np.zeros(k)),
                              ("audio_weight", np.ones(k)), ("text_weight", np.ones(k))):
            value = getattr(self, name)
            value = np.asarray(default if value is None else value, np.float32)
            if value.shape != (k,):
                raise ValueError(f"{name} needs one entry per emotion")
            object.__setattr__(self, name, value)
        for name, default in (("text_negative", self.negative), ("text_positive", self.positive)):
            value = getattr(self, name)
            object.__setattr__(self, name, np.asarray(default if value is None else value, np.float32))
        if self.text_negative.shape[0] != k or self.text_positive.shape != self.text_negative.shape:
            raise ValueError("text pole vectors must be [K, S] for K emotion names")

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
    # Four vectors an emotion where the text encoder has a sentence space of its own.
    text = len(poles[emotions[0].name]) > 2
    return BankVectors(
        names=tuple(e.name for e in emotions),
        negative=np.stack([poles[e.name][0] for e in emotions]).astype(np.float32),
        positive=np.stack([poles[e.name][1] for e in emotions]).astype(np.float32),
        scale=np.array([e.temperature or logit_scale for e in emotions], np.float32),
        bias=np.array([e.bias for e in emotions], np.float32),
        roles=tuple(e.roles for e in emotions),
        text_scale=np.array([e.text_temperature or logit_scale for e in emotions], np.float32),
        text_bias=np.array([e.text_bias for e in emotions], np.float32),
        audio_weight=np.array([e.audio_weight for e in emotions], np.float32),
        text_weight=np.array([e.text_weight for e in emotions], np.float32),
        text_negative=np.stack([poles[e.name][2] for e in emotions]) if text else None,
        text_positive=np.stack([poles[e.name][3] for e in emotions]) if text else None)


class HasVectors(Protocol):
    @property
    def vectors(self) -> BankVectors: ...


def bipolar_margins(embeddings: np.ndarray, bank: BankVectors, path: str = "audio") -> np.ndarray:
    """[n, K] float64 a·p − a·n: what temperature and bias act on (calibration fits them on it)."""
    a = np.atleast_2d(np.asarray(embeddings, np.float64))
    pos, neg = (bank.positive, bank.negative) if path == "audio" else (bank.text_positive, bank.text_negative)
    return a @ pos.T.astype(np.float64) - a @ neg.T.astype(np.float64)


def sigmoid(logit: np.ndarray) -> np.ndarray:
    # Two-way softmax == logistic of the logit difference; this form never overflows.
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(logit, np.float64)))).astype(np.float32)


def path_logits(embeddings: np.ndarray, bank: BankVectors, path: str = "audio") -> np.ndarray:
    """[n, K] float64 logits of the positive pole on one path ("audio" or "text")."""
    scale, bias = (bank.scale, bank.bias) if path == "audio" else (bank.text_scale, bank.text_bias)
    return scale.astype(np.float64) * bipolar_margins(embeddings, bank, path) + bias.astype(np.float64)


def bipolar_scores(embeddings: np.ndarray, bank: BankVectors, path: str = "audio") -> np.ndarray:
    """[n, K] probabilities of the positive pole: softmax(s·[a·n, a·p] + [0, bias])[1]."""
    return sigmoid(path_logits(embeddings, bank, path))


def fused_logits(audio_logits: np.ndarray, text_logits: np.ndarray, bank: BankVectors) -> np.ndarray:
    return (bank.audio_weight.astype(np.float64) * audio_logits
            + bank.text_weight.astype(np.float64) * text_logits)


def path_scores(audio: np.ndarray, text: np.ndarray | None,
                bank: BankVectors | HasVectors) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One utterance's ({"audio": [K], "text": [K]}, fused [K]); without a text embedding
    there is no text part and the fused score is the audio path's."""
    vectors = bank if isinstance(bank, BankVectors) else bank.vectors
    a = path_logits(audio, vectors, "audio")[0]
    if text is None:
        return {"audio": sigmoid(a)}, sigmoid(a)
    t = path_logits(text, vectors, "text")[0]
    return {"audio": sigmoid(a), "text": sigmoid(t)}, sigmoid(fused_logits(a, t, vectors))


def score_utterance(embedding: np.ndarray, bank: BankVectors | HasVectors,
                    role: str | None = None) -> dict[str, float]:
    """{emotion: score} for one utterance's audio path; emotions whose roles exclude `role`
    are left out."""
    return utterance_scores(embedding, None, bank, role)[1]


def utterance_scores(audio: np.ndarray, text: np.ndarray | None, bank: BankVectors | HasVectors,
                     role: str | None = None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """({path: {emotion: score}}, {emotion: fused score}) for one utterance, emotions whose
    roles exclude `role` left out."""
    vectors = bank if isinstance(bank, BankVectors) else bank.vectors
    parts, fused = path_scores(audio, text, vectors)
    keep = [i for i, name in enumerate(vectors.names)
            if role is None or vectors.roles[i] is None or role in vectors.roles[i]]
    return ({path: {vectors.names[i]: float(v[i]) for i in keep} for path, v in parts.items()},
            {vectors.names[i]: float(fused[i]) for i in keep})
