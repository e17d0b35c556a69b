"""The transcript of an utterance, read from the audio encoder's own frames: Whisper's
decoder, greedy, a bounded number of tokens, batched across utterances (`emoclap.decoding`
drives the steps, so the runtime and the trainer decode alike).

The bundle's `transcriber` section is a `DecodingSpec`; `parse_spec` checks it field by field.

The decoder attends to the utterance's frames only, not to 30 s of padding as Whisper
was trained: that is what lets it share the audio tower's pass (one encoder run per
utterance). Whisper then sometimes loops, repeating a phrase to the token bound;
`loop_start` finds such a repeat and the transcript keeps its first copy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Whisper's encoder: 160 samples a mel frame, two mel frames an encoder frame.
HOP, CONV_STRIDE = 160, 2
# A short span said three times running, or a long one twice, is a loop, not speech
# ("no, no, no" is three spans of two tokens; "I will think about it." twice is a loop).
LOOP_COPIES, LONG_SPAN = 3, 5
MAX_TOKENS_LIMIT = 448  # Whisper's decoder has 448 positions, the prompt included


def encoder_frames(samples: int) -> int:
    """Valid encoder frames for an utterance of `samples` (as trainer.whisper counts them)."""
    return -(-(samples // HOP) // CONV_STRIDE)


@dataclass(frozen=True)
class DecodingSpec:
    prompt: tuple[int, ...]     # <|startoftranscript|><|lang|><|transcribe|><|notimestamps|>
    eot: int                    # <|endoftext|>; every id above it is special and never emitted
    blank: tuple[int, ...]      # ids not allowed first (Whisper's suppress_blank: " ")
    max_tokens: int             # at most this many text tokens for any utterance
    tokens_per_second: float    # and at most base_tokens + this × seconds
    base_tokens: int
    layers: int
    heads: int
    head_dim: int

    def budget(self, seconds: float) -> int:
        return max(1, min(self.max_tokens, self.base_tokens + math.ceil(self.tokens_per_second * seconds)))


SPEC_FIELDS = {"prompt": list, "eot": int, "blank": list, "max_tokens": int, "tokens_per_second": (int, float),
               "base_tokens": int, "layers": int, "heads": int, "head_dim": int}


def parse_spec(section: dict, where: str) -> DecodingSpec:
    """A `DecodingSpec` from a manifest's `transcriber` section; ValueError names the field."""
    values = {}
    for key, kind in SPEC_FIELDS.items():
        value = section.get(key)
        if value is None:
            raise ValueError(f"{where}: field 'transcriber.{key}' is missing")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{where}: field 'transcriber.{key}' has the wrong type ({type(value).__name__})")
        values[key] = value
    for key in ("prompt", "blank"):
        ids = values[key]
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**31 for i in ids) or len(ids) > 16:
            raise ValueError(f"{where}: field 'transcriber.{key}' must be at most 16 token ids")
        values[key] = tuple(ids)
    if not values["prompt"]:
        raise ValueError(f"{where}: field 'transcriber.prompt' is empty")
    for key in ("eot", "layers", "heads", "head_dim"):
        if not 0 < values[key] < 2**31:
            raise ValueError(f"{where}: field 'transcriber.{key}' must be a positive integer")
    if not 0 < values["max_tokens"] <= MAX_TOKENS_LIMIT - len(values["prompt"]):
        raise ValueError(f"{where}: field 'transcriber.max_tokens' must be between 1 and "
                         f"{MAX_TOKENS_LIMIT - len(values['prompt'])}")
    if not (math.isfinite(values["tokens_per_second"]) and 0 < values["tokens_per_second"] <= 100):
        raise ValueError(f"{where}: field 'transcriber.tokens_per_second' must be in (0, 100]")
    if not 0 <= values["base_tokens"] <= MAX_TOKENS_LIMIT:
        raise ValueError(f"{where}: field 'transcriber.base_tokens' must be between 0 and {MAX_TOKENS_LIMIT}")
    return DecodingSpec(**values)


def spec_section(spec: DecodingSpec) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.__dict__.items()}


def loop_start(tokens: list[int]) -> int | None:
    """Where a loop at the end of `tokens` begins to repeat (the index after its first
    copy): the last span said LOOP_COPIES times running, or twice when it is at least
    LONG_SPAN tokens; else None."""
    n = len(tokens)
    for period in range(1, n // 2 + 1):
        copies = 2 if period >= LONG_SPAN else LOOP_COPIES
        if copies * period > n:
            continue
        tail = tokens[n - period:]
        if all(tokens[n - (c + 1) * period: n - c * period] == tail for c in range(1, copies)):
            return n - (copies - 1) * period
    return None


def pad_frames(frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Utterances' valid frames [T_i, D] → a zero-padded batch [B, T, D] and its validity [B, T]."""
    t = max(f.shape[0] for f in frames)
    batch = np.zeros((len(frames), t, frames[0].shape[1]), np.float32)
    valid = np.zeros((len(frames), t), np.float32)
    for i, f in enumerate(frames):
        batch[i, :f.shape[0]], valid[i, :f.shape[0]] = f, 1.0
    return batch, valid
