"""Class descriptions: the sentences of each emotion's poles, read from the prompt files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoclap.prompts import Emotion, Pole, emotion_name, load_prompt_dir, parse_prompt_file


@dataclass(frozen=True)
class Descriptions:
    """Per emotion, per pole (negative, positive), the sentences in one language, and the
    emotion's scoring settings from its prompt file."""

    emotions: tuple[str, ...]
    sentences: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    language: str
    # Per emotion, as in the prompt file; empty in checkpoints written before they were kept.
    temperature: tuple[float | None, ...] = ()
    bias: tuple[float, ...] = ()

    def sample(self, rng: np.random.Generator, paraphrases: bool = True) -> list[str]:
        """One sentence per pole, emotion-major: [e0 neg, e0 pos, e1 neg, ...]."""
        out = []
        for poles in self.sentences:
            for sents in poles:
                out.append(sents[int(rng.integers(len(sents)))] if paraphrases else sents[0])
        return out

    def all_sentences(self) -> list[tuple[int, int, str]]:
        return [(k, p, s) for k, poles in enumerate(self.sentences) for p, ss in enumerate(poles) for s in ss]

    def canonical(self) -> "Descriptions":
        """The same emotions with each pole's first sentence only."""
        return Descriptions(self.emotions, tuple(tuple(p[:1] for p in poles) for poles in self.sentences),
                            self.language, self.temperature, self.bias)

    def as_emotions(self) -> list[Emotion]:
        """These descriptions as prompt-file emotions (in order), for emoclap.zeroshot."""
        out = []
        for k, (name, (negative, positive)) in enumerate(zip(self.emotions, self.sentences)):
            out.append(Emotion(
                name=name, label=name, key_word=name, roles=None,
                temperature=self.temperature[k] if self.temperature else None,
                bias=self.bias[k] if self.bias else 0.0,
                negative=Pole("negative", {self.language: list(negative)}),
                positive=Pole("positive", {self.language: list(positive)})))
        return out


def descriptions_from(emotions: dict[str, Emotion], names: list[str], language: str,
                      source: str = "prompts") -> Descriptions:
    rows = []
    for name in names:
        if name not in emotions:
            raise ValueError(f"{source}: no prompt file for emotion {name!r} (have {', '.join(sorted(emotions))})")
        emo = emotions[name]
        poles = []
        for pole in (emo.negative, emo.positive):
            sents = pole.sentences.get(language)
            if not sents:
                raise ValueError(f"{emo.source}: pole {pole.label!r} has no sentences in language {language!r}")
            poles.append(tuple(sents))
        rows.append(tuple(poles))
    picked = [emotions[n] for n in names]
    return Descriptions(tuple(names), tuple(rows), language, tuple(e.temperature for e in picked),
                        tuple(e.bias for e in picked))


def load_descriptions(folder: str | Path, names: list[str], language: str) -> Descriptions:
    """From a prompt folder, or a single prompt file (e.g. an alternative purchase-intention pair)."""
    path = Path(folder)
    if path.is_file():
        emo = parse_prompt_file(path.read_text(encoding="utf-8"), emotion_name(path), str(path))
        return descriptions_from({emo.name: emo}, names or [emo.name], language, str(path))
    return descriptions_from(load_prompt_dir(path), names, language, str(path))
