"""The serve stage's parts on their own: scoring with visits and alerts (the pure core),
the station table, and the history writer's hold-and-retry."""
import asyncio

import numpy as np

from daemon.history_writer import HistoryWriter
from daemon.metrics import Metrics
from daemon.stations import Stations
from emoclap.alerts import Rule
from emoclap.privacy import PrivacyPolicy
from emoclap.record import Utterance
from emoclap.scoring import Scoring, Settings
from emoclap.zeroshot import BankVectors

BUY = Rule("buying", "purchase_intention", "above", 0.7, 0.6, min_utterances=1, cooldown_s=0)


def bank():
    neg = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    pos = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    return BankVectors(("pleasant", "purchase_intention"), neg, pos, np.array([10.0, 10.0], np.float32),
                       np.zeros(2, np.float32), (None, ("customer",)))


def utt(seq, t, role="customer", buying=True, transcript=None):
    vec = np.array([0.0, 0.0, 1.0] if buying else [0.0, 1.0, 0.0], np.float32)
    return Utterance("till", role, seq, t - 1000.0, t - 999.0, 1000.0, t, embedding=vec, transcript=transcript)


def scoring(**kw):
    return Scoring(bank(), Settings(60.0, kw.pop("end_after_s", 30.0)), (BUY,), PrivacyPolicy(),
                   kw.pop("keep_transcript", False))


def test_a_customer_is_scored_opens_a_visit_and_fires_the_rule_in_one_outcome():
    s = scoring()
    out = s.take(utt(1, 1001.0), embedded=True)
    assert out.scored and out.audio is None
    assert out.event["scores"]["purchase_intention"] > 0.9
    assert [v["state"] for v in out.visits] == ["opened"] and out.event["visit"] == out.visits[0]["visit"]
    assert [(a["rule"], a["state"], a["visit"]) for a in out.alerts] == [("buying", "fired", out.event["visit"])]
    assert s.active_alerts() == out.alerts and len(s.open_visits()) == 1


def test_a_role_the_gateway_does_not_score_is_speech_even_with_an_embedding():
    out = scoring().take(utt(1, 1001.0, role="staff"), embedded=True)
    assert not out.scored and out.event["type"] == "speech" and "scores" not in out.event
    assert out.alerts == [] and out.visits == []  # staff opens no visit


def test_the_next_visit_closes_the_last_and_its_alerts_are_cleared_first():
    s = scoring(end_after_s=30.0)
    first = s.take(utt(1, 1001.0), embedded=True)
    later = s.take(utt(2, 1100.0, buying=False), embedded=True)  # 99 s of silence
    assert [v["state"] for v in later.visits] == ["closed", "opened"]
    assert later.closed_visits[0]["visit"] == first.event["visit"]
    assert [a["state"] for a in later.alerts] == ["cleared"]  # the visit's end clears its alert
    assert s.active_alerts() == []


def test_tick_and_close_all_end_visits_with_their_alerts():
    s = scoring(end_after_s=30.0)
    s.take(utt(1, 1001.0), embedded=True)
    assert s.tick(1010.0) == ([], [])
    closed, cleared = s.tick(1100.0)
    assert [v["state"] for v in closed] == ["closed"] and [a["state"] for a in cleared] == ["cleared"]
    s.take(utt(2, 1200.0), embedded=True)
    closed, _ = s.close_all()
    assert len(closed) == 1 and s.open_visits() == []


def test_a_reload_changes_the_half_life_and_the_visit_gap():
    s = scoring(end_after_s=30.0)
    s.configure(Settings(5.0, 300.0))
    s.take(utt(1, 1001.0), embedded=True)
    later = s.take(utt(2, 1100.0), embedded=True)  # 99 s: within the new 300-s gap
    assert [v["state"] for v in later.visits] == ["updated"]
    assert s.scorer.half_life_s == 5.0


def test_the_transcript_is_kept_only_when_asked():
    assert "transcript" not in scoring().take(utt(1, 1001.0, transcript="I'll take it."), True).event
    kept = scoring(keep_transcript=True).take(utt(1, 1001.0, transcript="I'll take it."), True)
    assert kept.event["transcript"] == "I'll take it."


def test_ended_client_stations_expire_configured_ones_never():
    class Configured:
        name, role, source = "desk", "customer", "device"

    table = Stations([Configured()], Metrics(), ended_ttl_s=0.0, agent_quiet_s=5.0)
    table.register("kiosk", "customer", "ingest", "online")
    table.set_state("kiosk", "ended")
    table.set_state("desk", "ended")
    assert table.expire() == ["kiosk"]
    assert table.states() == {"desk": "ended"}
    table.reported({"desk": "online"})
    assert table.problems() == [] and table.any_online()


def test_a_refused_write_waits_and_goes_in_when_the_disk_takes_it_again():
    class Disk:
        def __init__(self):
            self.full, self.rows = True, []

        def write_many(self, rows, visits, alerts):
            if self.full:
                raise OSError(28, "No space left on device")
            self.rows += [e["seq"] for e, _ in rows]

    async def main():
        disk, metrics = Disk(), Metrics()
        writer = HistoryWriter(disk, metrics, store_transcripts=False)
        await writer.commit([({"seq": 1, "transcript": "personal"}, None)])
        await writer.commit([({"seq": 2}, None)])
        refused = writer.problem()
        disk.full = False
        await writer.retry()
        return disk.rows, refused, writer.problem(), writer.unwritten.rows

    rows, refused, after, waiting = asyncio.run(main())
    assert rows == [1, 2] and waiting == 0 and after is None
    assert "No space left on device" in refused and "2 row(s) waiting" in refused
