"""Stages over ZeroMQ: every utterance is scored or counted as dropped with a reason."""
import asyncio
import threading

import numpy as np

from daemon import service as service_module
from daemon.capture import StationPipe, segmenter_options
from daemon.links import Sender
from tests.tiny_bundle import tiny_bundle  # noqa: F401 (fixture)
from tests.servicekit import service_config, with_service
from tests.speech import dialogue
from tests.stagekit import Watch, config, write_stereo

SCRIPT = [0.5, "Good morning.", 0.8, "Could I see that jacket, please?", 0.8, "Yes.", 0.8,
          "How much is it?", 0.8, "I think I will take it.", 0.8]


def test_full_queue_drops_are_counted_not_lost(tmp_path):
    audio, spans = dialogue(SCRIPT, tmp_path)
    cfg = config(hwm=1)
    watch = Watch(cfg.stages.utterances, hwm=1)  # nobody reads while the pipe sends
    sender = Sender(cfg.stages.utterances, 1, status_interval_s=0.0)
    pipe = StationPipe("s", "customer", segmenter_options(cfg), sender)
    pipe.feed(audio)
    pipe.finish()
    reader = threading.Thread(target=watch.poll, args=(5,),
                              kwargs={"until": lambda w: w.dropped() + len(w.segments()) >= len(spans)})
    reader.start()
    sender.close()  # the last status waits (up to the linger time) for the reader
    reader.join()
    watch.close()
    assert pipe.seq == len(spans)
    assert watch.dropped("queue_full") > 0
    assert len(watch.segments()) + watch.dropped("queue_full") == pipe.seq


def test_pipes_keep_stations_apart(tmp_path):
    """Two stations fed alternately in small chunks: each one's utterances are its own."""
    a, a_spans = dialogue([0.5, "Good morning.", 2.5, "How much is it?", 1.0], tmp_path)
    b, b_spans = dialogue([2.0, "I think I will take it.", 2.0], tmp_path)
    n = max(a.size, b.size)
    a, b = np.pad(a, (0, n - a.size)), np.pad(b, (0, n - b.size))
    cfg = config()
    watch = Watch(cfg.stages.utterances)
    sender = Sender(cfg.stages.utterances, 1000, block=True)
    pipes = {name: StationPipe(name, "auto", segmenter_options(cfg), sender) for name in "ab"}
    for i in range(0, n, 480):
        pipes["a"].feed(a[i:i + 480])
        pipes["b"].feed(b[i:i + 480])
    for p in pipes.values():
        p.finish()
    sender.close()
    watch.poll(1)
    watch.close()
    for name, spans in (("a", a_spans), ("b", b_spans)):
        got = [(m.get("start"), m.get("end")) for m in watch.segments(name)]
        assert len(got) == len(spans), (name, got, spans)
        for (start, end), (on, off) in zip(got, spans):
            assert start <= on + 0.1 and off - 0.3 <= end <= off + 0.7


class FailOnce:
    """The real encoder, made to fail on the second batch it is given."""

    def __init__(self, encoder):
        self.encoder, self.calls = encoder, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode(self, audios):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("simulated ONNX Runtime failure")
        return self.encoder.encode(audios)


def test_every_utterance_is_scored_or_dropped_with_reason(tmp_path, tiny_bundle, monkeypatch):
    audio, spans = dialogue(SCRIPT, tmp_path)
    path = write_stereo(tmp_path / "mono.wav", audio[None, :])
    cfg = service_config(tmp_path, tiny_bundle, stations=f"""
[[stations]]
name = "desk"
file = "{path}"
realtime = false
""")
    cfg.segmenter.min_utterance_s = 0.6  # "Yes." is shorter: dropped as too_short
    cfg.encoder.max_batch = 1
    real_open = service_module.open_encoder

    def open_failing(cfg, bundle):
        worker, batcher = real_open(cfg, bundle)
        batcher.encoder.encoder = FailOnce(batcher.encoder.encoder)
        return worker, batcher
    monkeypatch.setattr(service_module, "open_encoder", open_failing)

    async def body(svc):
        server = svc.parts.server
        for _ in range(300):
            drops = server.metrics.drop_counts()
            if server.publisher.published + drops.get("encoder_error", 0) >= len(spans) - 1 \
                    and server.publisher.stations["desk"]["state"] == "ended":
                break
            await asyncio.sleep(0.1)
        return server.publisher.published, server.metrics.drop_counts(), list(svc.parts.history.events())

    published, drops, history = with_service(cfg, body, stages=("capture", "encode", "serve"))
    assert drops == {"too_short": 1, "encoder_error": 1}
    assert published + drops["too_short"] + drops["encoder_error"] == len(spans)
    assert len(history) == published


def test_wire_format_round_trip_and_refusals():
    import pytest

    from daemon import wire

    audio = np.linspace(-1, 1, 480, dtype=np.float32)
    frames = wire.encode(wire.Message("segment", {"station": "s", "seq": 3}, audio))
    msg = wire.decode(frames)
    assert (msg.kind, msg.header) == ("segment", {"station": "s", "seq": 3})
    np.testing.assert_array_equal(msg.payload, audio)
    for bad, why in [([frames[0]], "expected 2 frames"), ([b"{", b""], "bad header"),
                     ([b'{"v": 9, "kind": "segment"}', b""], "unsupported header version"),
                     ([b'{"v": 1, "kind": "noise"}', b""], "unknown kind"),
                     ([frames[0], b"\x00\x00\x00"], "whole float32")]:
        with pytest.raises(wire.WireError, match=why):
            wire.decode(bad)
