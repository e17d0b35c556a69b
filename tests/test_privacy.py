"""Customers only, by default: staff utterances are cut and counted but never embedded,
scored or stored with scores — in events, history, metrics and offline scoring alike."""
import asyncio
import json
import logging

import pytest
import websockets

from daemon.config import ConfigError, parse_config
from emoclap.privacy import PrivacyPolicy
from emoclap.record import Utterance
from tests.servicekit import receive, service_config, url, with_service
from tests.stagekit import stereo_dialogue, write_stereo

TURNS = [(0, 0.5), (0, "Good afternoon, can I help you?"), (0, 0.8),
         (1, "Yes, I am looking for a warm coat."), (1, 0.8),
         (0, "These ones arrived this week."), (0, 0.8), (1, "I will take the grey one."), (1, 0.6)]


def test_policy_splits_and_warns():
    utts = [Utterance("desk", role, i, 0.0, 1.0, 0.0, 0.0) for i, role in enumerate(("customer", "staff", "auto"))]
    scored, speech = PrivacyPolicy().split(utts)
    assert [u.role for u in scored] == ["customer"] and [u.role for u in speech] == ["staff", "auto"]
    assert PrivacyPolicy().warnings() == []
    (staff,) = PrivacyPolicy(("customer", "staff")).warnings()
    assert "Article 5(1)(f)" in staff
    with pytest.raises(ConfigError, match=r"privacy.scored_roles\[1\]: expected one of"):
        parse_config('[privacy]\nscored_roles = ["customer", "staf"]')


def test_staff_are_never_embedded_scored_or_stored_with_scores(tmp_path, tiny_bundle, caplog):
    stereo, spans = stereo_dialogue(tmp_path, TURNS)
    wav = write_stereo(tmp_path / "dialogue.wav", stereo)
    cfg = service_config(tmp_path, tiny_bundle, stations="".join(f"""
[[stations]]
name = "{name}"
role = "{name}"
file = "{wav}"
channel = {channel}
realtime = false
""" for name, channel in (("staff", 0), ("customer", 1))))

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as ws:
            hello = (await receive(ws, "hello", 1))[0]
            events = []
            while len(events) < len(spans[0]) + len(spans[1]):
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg["type"] in ("utterance", "speech"):
                    events.append(msg)
        metrics = svc.parts.server.metrics.render().decode()
        return hello, events, list(svc.parts.history.events()), metrics, svc.parts.batcher.utterances

    with caplog.at_level(logging.WARNING):
        hello, events, history, metrics, embedded = with_service(cfg, body, stages=("capture", "encode", "serve"))
    assert hello["scored_roles"] == ["customer"]
    staff = [e for e in events if e["station"] == "staff"]
    customer = [e for e in events if e["station"] == "customer"]
    assert len(staff) == len(spans[0]) and len(customer) == len(spans[1])
    assert all(e["type"] == "speech" and "scores" not in e and "rolling" not in e for e in staff)
    assert all(e["type"] == "utterance" and e["scores"] for e in customer)
    assert embedded == len(customer)  # the encoder never heard the staff
    stored = {(h["station"], h["seq"]): h for h in history}
    assert len(stored) == len(events)
    assert all("scores" not in h for (station, _), h in stored.items() if station == "staff")
    assert 'emoclap_utterances_total{station="staff"}' not in metrics
    assert f'emoclap_speech_utterances_total{{station="staff"}} {len(staff)}.0' in metrics
    assert "Article 5(1)(f)" not in caplog.text  # nothing to warn about


def test_turning_staff_scoring_on_is_explicit_and_logged(tmp_path, tiny_bundle, caplog):
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.privacy.scored_roles = ["customer", "staff"]

    async def body(svc):
        async with websockets.connect(url(svc, "/ws")) as ws:
            return (await receive(ws, "hello", 1))[0]

    with caplog.at_level(logging.WARNING, logger="emoclapd"):
        hello = with_service(cfg, body)
    assert hello["scored_roles"] == ["customer", "staff"]
    assert "privacy.scored_roles includes staff" in caplog.text and "Article 5(1)(f)" in caplog.text
