"""Class descriptions: the sentences of each emotion's poles, read from the prompt files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from daemon.prompts import Emotion, load_prompt_dir


@dataclass(frozen=True)
class Descriptions:
    """Per emotion, per pole (negative, positive), the sentences in one language."""

    emotions: tuple[str, ...]
    sentences: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]
    language: str

    def sample(self, rng: np.random.Generator, paraphrases: bool = True) -> list[str]:
        """One sentence per pole, emotion-major: [e0 neg, e0 pos, e1 neg, ...]."""
        out = []
        for poles in self.sentences:
            for sents in poles:
                out.append(sents[int(rng.integers(len(sents)))] if paraphrases else sents[0])
        return out

    def all_sentences(self) -> list[tuple[int, int, str]]:
        return [(k, p, s) for k, poles in enumerate(self.sentences) for p, ss in enumerate(poles) for s in ss]


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
    return Descriptions(tuple(names), tuple(rows), language)


def load_descriptions(folder: str | Path, names: list[str], language: str) -> Descriptions:
    """From a prompt folder, or a single prompt file (e.g. an alternative purchase-intention pair)."""
    path = Path(folder)
    if path.is_file():
        from daemon.prompts import emotion_name, parse_prompt_file

        emo = parse_prompt_file(path.read_text(encoding="utf-8"), emotion_name(path), str(path))
        return descriptions_from({emo.name: emo}, names or [emo.name], language, str(path))
    return descriptions_from(load_prompt_dir(path), names, language, str(path))


@torch.no_grad()
def pole_vectors(embed_text, desc: Descriptions) -> torch.Tensor:
    """[K, 2, D]: per pole, the mean of its sentences' normalised embeddings, re-normalised
    (what the runtime caches for scoring)."""
    items = desc.all_sentences()
    emb = embed_text([s for _, _, s in items])
    k = len(desc.emotions)
    out = torch.zeros(k, 2, emb.shape[1])
    for (ki, pi, _), e in zip(items, emb):
        out[ki, pi] += e
    return F.normalize(out, dim=-1)
