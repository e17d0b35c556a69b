"""Synthesised speech for tests: espeak-ng utterances with known timing."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from emoclap.audio import read_mono

RATE = 16000


def say(text: str, folder: Path, voice: str = "en") -> np.ndarray:
    """`text` spoken by espeak-ng, trimmed to its audible part, float32 at 16 kHz."""
    path = Path(folder) / f"say-{abs(hash((text, voice)))}.wav"
    if not path.exists():
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True,
                       capture_output=True)
    audio = read_mono(path, RATE)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0]:loud[-1] + 1].copy()


def dialogue(parts: list, folder: Path) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate silences (float seconds) and utterances (str); returns audio and the
    (onset, offset) in seconds of every utterance."""
    chunks, spans, t = [], [], 0.0
    for part in parts:
        if isinstance(part, str):
            audio = say(part, folder)
            spans.append((t, t + audio.size / RATE))
        else:
            audio = np.zeros(int(round(part * RATE)), np.float32)
        chunks.append(audio)
        t += audio.size / RATE
    return np.concatenate(chunks), spans
