"""Utterance quality: whether an utterance is good enough to score (abstain otherwise).

An utterance that is too short, too quiet, clipped or mostly noise still gets scores,
but it is flagged `insufficient` with the first failing reason, and the rolling scores,
visit summaries and alerts leave it out: a score inferred from a cough or from a
shout that saturated the microphone says little about the customer.

Measured from the utterance's samples as recorded (before any gain) and the
segmenter's per-frame voice-activity decisions:

- `duration_s`: speech from the first to the last voiced frame (padding left out)
- `level_dbfs`: RMS level of the voiced frames, dB relative to full scale (a full-scale
  square wave is 0 dBFS, a full-scale sine -3 dBFS)
- `clipped`: fraction of the speech span's samples at or beyond `CLIP_LEVEL`, at 16 kHz
  (a 48 kHz card's clipping, resampled, reads about a fifth lower than at its own rate)
- `snr_db`: speech power over noise power. The voiced frames hold speech plus noise,
  so the noise floor is subtracted before the ratio (power subtraction). The floor is
  the mean energy of the station's recent non-speech frames (with the utterance's own
  non-speech frames, its padding and pauses, when the station has heard too few), but
  never below the energy of the utterance's quietest tenth of frames.

`bench/quality_snr.py` measures the estimate against the true SNR and what noise,
level and clipping do to the scores; the defaults below come from it (README).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from emoclap.audio import SAMPLE_RATE

REASONS = ("too_short", "too_quiet", "clipped", "noisy")  # checked in this order
KEYS = ("duration_s", "level_dbfs", "clipped", "snr_db")
FRAME = 480  # 30 ms at 16 kHz, the segmenter's default frame
CLIP_LEVEL = 0.99  # |sample| at or above: at full scale (int16 tops out at 0.99997)
ENERGY_FLOOR = 1e-10  # -100 dBFS: digital silence still has a finite level
SNR_RANGE = (-30.0, 100.0)  # reported SNRs are clamped here (digital silence has no floor)
MIN_NOISE_FRAMES = 10  # fewer station noise frames than this: the utterance's own are added
QUIET_SHARE = 10  # percentile of an utterance's frame energies: a floor it shows itself


@dataclass(frozen=True)
class QualityOptions:
    """Thresholds of the abstain decision (`[quality]` in the daemon's configuration)."""
    enabled: bool = True          # false: quality is measured and reported, never flagged
    min_duration_s: float = 0.5   # shorter speech: "too_short"
    min_level_dbfs: float = -50.0  # quieter voiced frames: "too_quiet"
    max_clipped: float = 0.01     # a larger share of samples at full scale: "clipped"
    min_snr_db: float = 10.0      # a lower estimated SNR: "noisy"

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ValueError("enabled: expected true or false")
        limits = {"min_duration_s": (0.0, 60.0), "min_level_dbfs": (-100.0, 0.0),
                  "max_clipped": (0.0, 1.0), "min_snr_db": SNR_RANGE}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
            if not low <= value <= high:
                raise ValueError(f"{name}: expected a number from {low:g} to {high:g}, got {value!r}")

    def verdict(self, quality: "Quality") -> str | None:
        """The first failing reason (in `REASONS` order), or None: good enough to score."""
        if not self.enabled:
            return None
        if quality.duration_s < self.min_duration_s:
            return "too_short"
        if quality.level_dbfs < self.min_level_dbfs:
            return "too_quiet"
        if quality.clipped > self.max_clipped:
            return "clipped"
        if quality.snr_db < self.min_snr_db:
            return "noisy"
        return None


@dataclass(frozen=True)
class Quality:
    duration_s: float
    level_dbfs: float
    clipped: float
    snr_db: float

    def as_dict(self) -> dict:
        """Rounded for events, the wire header and the history."""
        return {"duration_s": round(self.duration_s, 3), "level_dbfs": round(self.level_dbfs, 1),
                "clipped": round(self.clipped, 4), "snr_db": round(self.snr_db, 1)}


def frame_energy(frame: np.ndarray) -> float:
    """Mean square of one frame (0 for an empty one)."""
    return float(np.dot(frame, frame)) / frame.size if frame.size else 0.0


def frame_energies(audio: np.ndarray, frame: int = FRAME) -> np.ndarray:
    """Mean square per frame; a partial last frame is averaged over its own samples."""
    whole = audio.size // frame
    squares = np.square(audio, dtype=np.float64)
    out = squares[:whole * frame].reshape(whole, frame).mean(axis=1)
    if audio.size > whole * frame:
        out = np.append(out, squares[whole * frame:].mean())
    return out


def _db(energy: float) -> float:
    return 10.0 * math.log10(max(energy, ENERGY_FLOOR))


def noise_floor(energies: np.ndarray) -> float:
    """Noise power from non-speech frame energies: their mean. The VAD calls the quieter
    stretches of fluctuating noise (pink, babble) non-speech, so the median sits 1-2 dB
    under the noise power (bench/quality_snr.py); the mean is nearer."""
    return float(np.mean(energies)) if energies.size else 0.0


def measure(audio: np.ndarray, voiced: np.ndarray | None = None, noise: np.ndarray | None = None,
            frame: int = FRAME, sample_rate: int = SAMPLE_RATE) -> Quality:
    """Quality of one utterance.

    `voiced`: the VAD's decision per `frame` samples of `audio` (None: every frame is
    speech); `noise`: energies of the station's recent non-speech frames (None: none
    known). Any finite input gives finite values; it never raises on audio content.
    """
    audio = np.nan_to_num(np.asarray(audio, np.float32).reshape(-1), posinf=1.0, neginf=-1.0)
    frame = max(1, int(frame))
    energies = frame_energies(audio, frame)
    n = energies.size
    if n == 0:
        return Quality(0.0, _db(0.0), 0.0, SNR_RANGE[0])
    flags = np.ones(n, bool) if voiced is None else np.asarray(voiced, bool).reshape(-1)[:n]
    flags = np.pad(flags, (0, n - flags.size))
    spoken = np.flatnonzero(flags)
    if spoken.size:
        first, last = int(spoken[0]), int(spoken[-1])
        span = audio[first * frame:(last + 1) * frame]
        speech = float(energies[flags].mean())
    else:  # nothing voiced: no speech span; the level is that of the whole clip
        span, speech = audio[:0], float(energies.mean())
    clipped = float(np.count_nonzero(np.abs(span) >= CLIP_LEVEL)) / span.size if span.size else 0.0
    floor = _floor(energies, flags, noise)
    signal = speech - floor  # voiced frames carry the noise too
    snr = (SNR_RANGE[1] if floor <= ENERGY_FLOOR and signal > ENERGY_FLOOR
           else 10.0 * math.log10(max(signal, ENERGY_FLOOR) / max(floor, ENERGY_FLOOR)))
    return Quality(duration_s=span.size / sample_rate, level_dbfs=_db(speech), clipped=clipped,
                   snr_db=min(max(snr, SNR_RANGE[0]), SNR_RANGE[1]))


def _floor(energies: np.ndarray, flags: np.ndarray, noise: np.ndarray | None) -> float:
    known = np.zeros(0) if noise is None else np.asarray(noise, np.float64).reshape(-1)
    known = known[np.isfinite(known) & (known >= 0)]
    if known.size < MIN_NOISE_FRAMES:
        known = np.concatenate([known, energies[~flags]])
    # The quietest tenth of the utterance (its padding and pauses) is a floor too: noise
    # that began with the utterance (a machine switched on, a recording gated between
    # sentences) is not in the station's history, and all of it may count as voiced.
    quiet = float(np.percentile(energies, QUIET_SHARE))
    return max(noise_floor(known), quiet) if known.size else quiet


def check(quality, insufficient) -> tuple[dict | None, str | None]:
    """A quality dict and reason from a message, validated; ValueError names the field."""
    if quality is not None:
        if not isinstance(quality, dict) or set(quality) != set(KEYS):
            raise ValueError(f"field 'quality': expected an object with {', '.join(KEYS)}")
        for key in KEYS:
            value = quality[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"field 'quality.{key}': expected a finite number, got {value!r}")
        if quality["duration_s"] < 0:
            raise ValueError("field 'quality.duration_s': negative")
        if not 0 <= quality["clipped"] <= 1:
            raise ValueError("field 'quality.clipped': expected a fraction from 0 to 1")
        quality = {key: float(quality[key]) for key in KEYS}
    if insufficient is not None and insufficient not in REASONS:
        raise ValueError(f"field 'insufficient': expected null or one of {', '.join(REASONS)}, "
                         f"got {insufficient!r}")
    return quality, insufficient
