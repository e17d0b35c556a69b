"""Where an utterance's time goes, stage by stage, from its last audio to its publication.

Each stage adds the seconds it held the utterance (`Utterance.spans`); they add up to
the time from the utterance's end in its stream to the moment the serve stage handed its
event to the clients' queues. Stages on other hosts are timed by their own wall clocks,
so a span that crosses hosts (`to_encoder`, `to_serve`) carries their clock offset.

- `closing`     the utterance's last audio → the segmenter closing it (the VAD's
                hangover, and the capture's chunking)
- `to_encoder`  closed → an encode worker holding it (capture → broker → worker)
- `queue`       held by the worker → its batch's encoder call done, less `encode` and
                `decode` (waiting for a batch, for company, for the batch before)
- `encode`      the audio tower's pass over its batch
- `decode`      the text path: the transcript's greedy decode and the text tower
- `to_serve`    encoded → the serve stage reading it (worker → broker → serve)
- `score`       scoring against the prompt bank, visits and alerts
- `store`       the history's commit (before publication: what a client saw is stored)
- `publish`     stored → its event in every client's queue (the burst's earlier events)

What a client adds after that (its queue and socket) is `emoclap_fanout_seconds`.
"""
from __future__ import annotations

import math

STAGES = ("closing", "to_encoder", "queue", "encode", "decode", "to_serve", "score", "store", "publish")
MAX_SPAN_S = 3600.0  # a span longer than this is a broken clock, not a latency


def span(seconds: float) -> float:
    """A measured duration as a span: never negative (clocks of two hosts), bounded."""
    return min(max(0.0, float(seconds)), MAX_SPAN_S)


def check(value) -> dict[str, float]:
    """A `spans` header field; ValueError names what is wrong."""
    if not isinstance(value, dict):
        raise ValueError(f"expected an object of stage → seconds, got {type(value).__name__}")
    out = {}
    for name, seconds in value.items():
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r} (known: {', '.join(STAGES)})")
        if (not isinstance(seconds, (int, float)) or isinstance(seconds, bool)
                or not math.isfinite(seconds) or not 0 <= seconds <= MAX_SPAN_S):
            raise ValueError(f"stage {name!r}: expected seconds in [0, {MAX_SPAN_S:g}], got {seconds!r}")
        out[name] = float(seconds)
    return out


def milliseconds(spans: dict[str, float]) -> dict[str, float]:
    """The event's `latency_ms`: each stage's span in ms, in the stages' order."""
    return {name: round(spans[name] * 1000.0, 1) for name in STAGES if name in spans}
