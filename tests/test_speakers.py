"""Staff recognised by voice on a shared microphone: the decision is made before the
emotion encoder, so staff audio on an `auto` station is never embedded for emotion."""
import asyncio
import json

import numpy as np
import pytest
import websockets

from daemon.cli import main as emoclapd
from daemon.speakers import SpeakerEncoder, SpeakerError, VoiceprintStore, enroll
from emoclap import voiceprint, wire
from emoclap.audio import write_wav
from emoclap.record import Utterance, from_header, header
from emoclap.segmenter import SegmenterOptions
from tests.servicekit import receive, service_config, url, with_service
from tests.speech import say

STAFF, CUSTOMER = "en+m3", "en+f4"
ENROL = ["Good afternoon, how can I help you today?", "This model comes with a three year warranty.",
         "We have it in grey, blue and a dark green.", "Let me check the stock in the back for you."]


@pytest.fixture(scope="session")
def speaker_encoder(tmp_path_factory):
    """The real GE2E encoder, exported from resemblyzer's pinned weights (cached in var/)."""
    from trainer.speaker_export import export
    out = tmp_path_factory.mktemp("speaker-encoder")
    export(out)
    return out


def wav(path, *parts):
    """Write 16 kHz mono audio made of arrays and silences (float seconds)."""
    chunks = [np.zeros(int(p * 16000), np.float32) if isinstance(p, float) else p for p in parts]
    write_wav(path, np.concatenate(chunks)[None, :])
    return str(path)


# ---- pure matching and front end

def test_decision_threshold_and_fields():
    a, b = np.eye(4, dtype=np.float32)[0], np.eye(4, dtype=np.float32)[1]
    prints = {"ann": a, "bob": b}
    staff = voiceprint.decide(a * 3 + b * 0.1, prints, 0.9)
    assert staff.decision == "staff" and staff.match == "ann" and staff.similarity > 0.99
    customer = voiceprint.decide(a + b, prints, 0.9)
    assert customer.as_dict() == {"decision": "customer", "similarity": 0.7071, "match": None}
    assert voiceprint.cosine(voiceprint.average([a, b]), a + b) == pytest.approx(1.0)
    assert voiceprint.least_similar([a, a, b])[0] == pytest.approx(0.0)
    assert voiceprint.eer([0.9, 0.95, 0.8], [0.1, 0.2, 0.85]) == (pytest.approx(1 / 3), 0.85)
    with pytest.raises(ValueError, match="a name exactly when"):
        voiceprint.check_decision({"decision": "staff", "similarity": 0.9, "match": None})


def test_mel_front_end_matches_librosa_definition():
    import torch
    from transformers.audio_utils import mel_filter_bank
    # librosa.filters.mel defaults: Slaney scale, Slaney (area) normalisation, 0 Hz to Nyquist.
    ref = mel_filter_bank(num_frequency_bins=201, num_mel_filters=40, min_frequency=0.0,
                          max_frequency=8000.0, sampling_rate=16000, norm="slaney", mel_scale="slaney")
    assert np.abs(ref.T - voiceprint.mel_filterbank()).max() < 1e-6
    wav = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    # librosa.stft: centred, zero-padded (pad_mode="constant"), periodic Hann, power 2.
    spec = torch.stft(torch.from_numpy(wav), 400, 160, window=torch.hann_window(400), center=True,
                      pad_mode="constant", return_complex=True).abs().pow(2).numpy()
    want = (voiceprint.mel_filterbank() @ spec).T
    got = voiceprint.mel_frames(wav)
    assert got.shape == want.shape == (101, 40)
    assert np.abs(got - want).max() / want.max() < 1e-5
    assert [s.start for s in voiceprint.partial_slices(16000 * 3)] == [0, 77, 154]


def test_wire_carries_the_decision_and_old_messages_stay_valid():
    utt = Utterance("desk", "staff", 1, 0.0, 1.0, 0.0, 0.0, audio=np.zeros(0, np.float32),
                    speaker={"decision": "staff", "similarity": 0.93, "match": "ann"})
    assert wire.decode(wire.speech(utt)).utterance.speaker == utt.speaker
    old = header(utt)
    del old["speaker"]
    assert from_header(old).speaker is None
    with pytest.raises(ValueError, match="speaker"):
        from_header(dict(header(utt), role="customer"))


# ---- the encoder and enrolment

def test_onnx_matches_torch_on_speech(speaker_encoder, tmp_path):
    import torch
    from trainer.speaker_export import fetch_weights, load_model
    manifest = json.loads((speaker_encoder / "manifest.json").read_text())
    assert manifest["parity_max_abs"] < 1e-5
    mels = voiceprint.partials(say(ENROL[0] + " " + ENROL[1], tmp_path, STAFF))
    with torch.no_grad():
        want = load_model(fetch_weights())(torch.from_numpy(mels)).numpy()
    got = SpeakerEncoder(speaker_encoder).session.run(None, {"mels": mels})[0]
    assert np.abs(got - want).max() < 1e-5


def test_enrolment_refuses_short_silent_and_mixed_audio(speaker_encoder, tmp_path):
    enc, opts = SpeakerEncoder(speaker_encoder), SegmenterOptions()
    short = wav(tmp_path / "short.wav", 0.5, say("Hello there.", tmp_path, STAFF), 0.5)
    with pytest.raises(SpeakerError, match=r"short\.wav: .* s of speech; enrolment needs at least 3 s"):
        enroll("ann", [short], enc, opts)
    silent = wav(tmp_path / "silent.wav", 4.0)
    with pytest.raises(SpeakerError, match=r"silent\.wav: no speech found"):
        enroll("ann", [silent], enc, opts)
    mixed = wav(tmp_path / "mixed.wav", 0.5, say(ENROL[0], tmp_path, STAFF), 0.8,
                say(ENROL[1], tmp_path, CUSTOMER), 0.5)
    with pytest.raises(SpeakerError, match=r"mixed\.wav: several speakers"):
        enroll("ann", [mixed], enc, opts)
    one = wav(tmp_path / "one.wav", 0.5, say(ENROL[0], tmp_path, STAFF), 0.8, say(ENROL[1], tmp_path, STAFF))
    other = wav(tmp_path / "other.wav", 0.5, say(ENROL[2], tmp_path, CUSTOMER), 0.8,
                say(ENROL[3], tmp_path, CUSTOMER))
    with pytest.raises(SpeakerError, match=r"other\.wav: its voice differs from .*one\.wav"):
        enroll("ann", [one, other], enc, opts)


# ---- end to end: one shared microphone, an enrolled staff voice and a customer alternating

TURNS = [(STAFF, "Hello, welcome in, are you looking for anything special?"),
         (CUSTOMER, "Yes, I would like a warm coat for the winter."),
         (STAFF, "These ones arrived this week and they are very warm."),
         (CUSTOMER, "I think I will take the grey one, thank you.")]


def test_shared_microphone_scores_customers_only(speaker_encoder, tmp_path, tiny_bundle, capsys):
    clips = [wav(tmp_path / f"enrol{i}.wav", 0.3, say(s, tmp_path, STAFF), 0.3) for i, s in enumerate(ENROL)]
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(f'[speakers]\nenabled = true\nencoder = "{speaker_encoder}"\n'
                        f'voiceprints = "{tmp_path / "vp.sqlite3"}"\n')
    assert emoclapd(["enroll", "ann", *clips, "--config", str(cfg_file)]) == 0
    assert emoclapd(["enroll", "--list", "--config", str(cfg_file)]) == 0
    assert capsys.readouterr().out.startswith("ann\t")
    parts = [0.5]
    for voice, text in TURNS:
        parts += [say(text, tmp_path, voice), 0.9]
    counter = wav(tmp_path / "counter.wav", *parts)
    cfg = service_config(tmp_path, tiny_bundle, stations=f"""
[[stations]]
name = "counter"
role = "auto"
file = "{counter}"
realtime = false
""")
    cfg.speakers.enabled, cfg.speakers.encoder = True, str(speaker_encoder)
    cfg.speakers.voiceprints = str(tmp_path / "vp.sqlite3")

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as ws:
            await receive(ws, "hello", 1)
            events = []
            while len(events) < len(TURNS):
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg["type"] in ("utterance", "speech"):
                    events.append(msg)
        return events, list(svc.parts.history.events()), svc.parts.batcher.utterances

    events, history, embedded = with_service(cfg, body, stages=("capture", "encode", "serve"))
    events.sort(key=lambda e: e["seq"])
    assert [e["role"] for e in events] == ["staff", "customer", "staff", "customer"]
    for e in events[0::2]:
        assert e["type"] == "speech" and "scores" not in e
        assert e["speaker"]["decision"] == "staff" and e["speaker"]["match"] == "ann"
        assert e["speaker"]["similarity"] >= cfg.speakers.threshold
    for e in events[1::2]:
        assert e["type"] == "utterance" and e["scores"]
        assert e["speaker"]["decision"] == "customer" and e["speaker"]["match"] is None
    assert embedded == 2  # the emotion encoder never heard the staff member
    assert all("scores" not in h for h in history if h["role"] == "staff")
    assert emoclapd(["enroll", "--remove", "ann", "--config", str(cfg_file)]) == 0
    assert VoiceprintStore(tmp_path / "vp.sqlite3").list() == []
