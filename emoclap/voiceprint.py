"""Staff recognised by voice: the speaker encoder's front end and the matching rule.

A shared counter microphone (`role = "auto"`) hears staff and customers. Each utterance's
speaker embedding (GE2E, resemblyzer's pretrained weights) is compared with the enrolled
staff voiceprints; at or above the threshold it is staff, otherwise a customer. The
decision is made before the emotion encoder, so a staff member's audio is never embedded
for emotion. Pure numpy: the adapter (`daemon.speakers`) runs the network.

The front end reproduces resemblyzer's `wav_to_mel_spectrogram` (librosa's
`melspectrogram`: centred STFT with zero padding, periodic Hann window, power 2, Slaney
mel scale and area normalisation) because the network was trained on exactly that.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400          # 25 ms
HOP = 160            # 10 ms
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s per partial utterance
PARTIAL_RATE = 1.3    # partials per second (resemblyzer's default: about 50 % overlap)
MIN_COVERAGE = 0.75
TARGET_DBFS = -30.0
DECISIONS = ("staff", "customer")


def _hz_to_mel(f):
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    mel = f / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log_part, mel)


def _mel_to_hz(m):
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] triangular filters, Slaney-normalised (librosa's defaults)."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels]))[:, None]
    return weights.astype(np.float32)


_FILTERS = mel_filterbank()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)


def mel_frames(wav: np.ndarray) -> np.ndarray:
    """16 kHz float audio → [frames, 40] mel power spectrogram (not log), float32."""
    wav = np.asarray(wav, np.float32).reshape(-1)
    padded = np.pad(wav, N_FFT // 2)
    n = 1 + (padded.size - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(padded[idx] * _WINDOW, axis=1)) ** 2
    return (spec.astype(np.float32) @ _FILTERS.T).astype(np.float32)


def normalize_volume(wav: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raise quiet audio to the level the encoder was trained at (never lowers it)."""
    wav = np.asarray(wav, np.float32)
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if wav.size else 0.0
    if rms <= 1e-8:
        return wav
    change = target_dbfs - 20 * np.log10(rms)
    return wav if change < 0 else (wav * 10 ** (change / 20)).astype(np.float32)


def partial_slices(n_samples: int, rate: float = PARTIAL_RATE,
                   min_coverage: float = MIN_COVERAGE) -> list[slice]:
    """Mel-frame slices of the partial utterances (resemblyzer's `compute_partial_slices`):
    at least one; a last one that covers less than `min_coverage` is dropped."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((SAMPLE_RATE / rate) / HOP))
    starts = range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)
    out = [slice(i, i + PARTIAL_FRAMES) for i in starts]
    last = out[-1]
    coverage = (n_samples - last.start * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < min_coverage and len(out) > 1:
        out.pop()
    return out


def partials(wav: np.ndarray) -> np.ndarray:
    """Audio → [n_partials, 160, 40] mel windows, the encoder's input."""
    wav = normalize_volume(wav)
    slices = partial_slices(wav.size)
    need = slices[-1].stop * HOP
    if need >= wav.size:
        wav = np.pad(wav, (0, need - wav.size))
    mel = mel_frames(wav)
    return np.stack([mel[s] for s in slices])


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise ValueError("cannot normalise a zero or non-finite vector")
    return v / norm


def average(embeddings) -> np.ndarray:
    """A voiceprint: the normalised mean of unit embeddings."""
    return unit(np.mean([unit(e) for e in embeddings], axis=0))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(unit(a), unit(b)))


def least_similar(embeddings) -> tuple[float, int, int]:
    """(lowest pairwise cosine, i, j): several speakers in what should be one show up here."""
    worst = (1.0, 0, 0)
    for i in range(len(embeddings)):
        for j in range(i + 1, len(embeddings)):
            c = cosine(embeddings[i], embeddings[j])
            if c < worst[0]:
                worst = (c, i, j)
    return worst


@dataclass(frozen=True)
class SpeakerDecision:
    decision: str            # staff | customer
    similarity: float        # best cosine against the enrolled voiceprints
    match: str | None        # the staff member's name when staff

    def as_dict(self) -> dict:
        return {"decision": self.decision, "similarity": round(self.similarity, 4), "match": self.match}


def decide(embedding: np.ndarray, voiceprints: dict[str, np.ndarray], threshold: float) -> SpeakerDecision:
    """Staff when the voice is at least `threshold` similar to an enrolled voiceprint."""
    if not voiceprints:
        raise ValueError("no voiceprints enrolled")
    sims = {name: cosine(embedding, vp) for name, vp in voiceprints.items()}
    best = max(sims, key=sims.get)
    if sims[best] >= threshold:
        return SpeakerDecision("staff", sims[best], best)
    return SpeakerDecision("customer", sims[best], None)


def check_decision(value) -> dict:
    """A `speaker` field from a message; ValueError says what is wrong."""
    if not isinstance(value, dict) or set(value) != {"decision", "similarity", "match"}:
        raise ValueError("expected {decision, similarity, match}")
    sim = value["similarity"]
    if value["decision"] not in DECISIONS:
        raise ValueError(f"decision: expected one of {', '.join(DECISIONS)}")
    if isinstance(sim, bool) or not isinstance(sim, (int, float)) or not -1.0001 <= sim <= 1.0001:
        raise ValueError("similarity: expected a number in [-1, 1]")
    if value["match"] is not None and not (isinstance(value["match"], str) and value["match"]):
        raise ValueError("match: expected a name or null")
    if (value["decision"] == "staff") != (value["match"] is not None):
        raise ValueError("match: a name exactly when the decision is staff")
    return {"decision": value["decision"], "similarity": float(sim), "match": value["match"]}


def eer(genuine, impostor) -> tuple[float, float]:
    """(equal-error rate, threshold at it) of similarity scores: staff trials vs customer trials."""
    genuine, impostor = np.asarray(genuine, float), np.asarray(impostor, float)
    best = (2.0, 0.0, 0.0)
    for t in np.unique(np.concatenate([genuine, impostor])):
        frr, far = float(np.mean(genuine < t)), float(np.mean(impostor >= t))
        if abs(frr - far) < best[0]:
            best = (abs(frr - far), (frr + far) / 2, float(t))
    return best[1], best[2]
