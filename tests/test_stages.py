"""Stages over ZeroMQ: every utterance is scored or counted as dropped with a reason."""
import asyncio
import threading


from daemon import service as service_module
from emoclap.station import StationStream
from daemon.links import Sender
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
    stream = StationStream("s", "customer", cfg.segmenter)
    sent = sender.send_utterances(stream.feed(audio) + stream.finish())
    reader = threading.Thread(target=watch.poll, args=(5,),
                              kwargs={"until": lambda w: w.dropped() + len(w.segments()) >= len(spans)})
    reader.start()
    sender.close()  # the last status waits (up to the linger time) for the reader
    reader.join()
    watch.close()
    assert stream.seq == len(spans)
    assert watch.dropped("queue_full") == stream.seq - sent > 0
    assert len(watch.segments()) == sent


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
role = "customer"
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
            if svc.parts.floor.published + drops.get("encoder_error", 0) >= len(spans) - 1 \
                    and svc.parts.floor.station_states()["desk"] == "ended":
                break
            await asyncio.sleep(0.1)
        return svc.parts.floor.published, server.metrics.drop_counts(), list(svc.parts.history.events())

    published, drops, history = with_service(cfg, body, stages=("capture", "encode", "serve"))
    assert drops == {"too_short": 1, "encoder_error": 1}
    assert published + drops["too_short"] + drops["encoder_error"] == len(spans)
    assert len(history) == published
