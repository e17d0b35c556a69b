"""History: events survive in SQLite (WAL) and export as CSV / JSON Lines by time range."""
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from daemon.history import History, HistoryError, export, parse_time

REPO = Path(__file__).resolve().parent.parent


def event(t, station="s1", role="customer", scores=None):
    return {"type": "utterance", "station": station, "role": role, "seq": 1, "start": 1.0,
            "end": 2.5, "duration": 1.5, "time": t,
            "scores": scores or {"pleasant": 0.7, "purchase_intention": 0.4}, "rolling": {}}


def test_wal_and_time_range(tmp_path):
    h = History(tmp_path / "h.db")
    assert h.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    for t in (1000.0, 2000.0, 3000.0):
        h.write(event(t))
    assert [e["time"] for e in h.events(since=1500, until=3000)] == [2000.0]
    h.close()
    # a fresh connection sees everything (committed, not cached)
    assert len(list(History(tmp_path / "h.db").events())) == 3


def test_audio_only_when_configured(tmp_path):
    audio = np.linspace(-1, 1, 160, dtype=np.float32)
    off = History(tmp_path / "off.db")
    assert off.audio(off.write(event(1.0), audio)) is None
    on = History(tmp_path / "on.db", store_audio=True)
    np.testing.assert_array_equal(on.audio(on.write(event(1.0), audio)), audio)


def test_csv_has_one_column_per_emotion_and_path_and_blank_when_not_scored():
    fused = event(2.0)
    fused["parts"] = {"audio": {"pleasant": 0.6, "purchase_intention": 0.3},
                      "text": {"purchase_intention": 0.55}}
    events = [event(0.0), event(1.0, role="staff", scores={"pleasant": 0.25}), fused]
    buf = io.StringIO()
    assert export(iter(events), buf, "csv") == 3
    rows = list(csv.reader(io.StringIO(buf.getvalue())))
    assert rows[0] == ["time", "station", "role", "start", "end", "duration", "insufficient",
                       "quality_duration_s", "quality_level_dbfs", "quality_clipped", "quality_snr_db",
                       "pleasant", "purchase_intention", "audio:pleasant", "audio:purchase_intention",
                       "text:pleasant", "text:purchase_intention"]
    assert rows[1][0] == "1970-01-01T00:00:00.000+00:00" and rows[1][-6:] == ["0.7000", "0.4000", "", "", "", ""]
    assert rows[2][-6:-4] == ["0.2500", ""]
    assert rows[3][-4:] == ["0.6000", "0.3000", "", "0.5500"]  # no words read for pleasant: no text part


def test_parse_time():
    assert parse_time("1970-01-01T00:01:00", "--since") == 60.0
    assert parse_time("1970-01-01T01:00:00+01:00", "--since") == 0.0
    assert parse_time("90.5", "--since") == 90.5
    with pytest.raises(HistoryError, match="--until: expected an ISO 8601"):
        parse_time("yesterday", "--until")


def test_cli_export(tmp_path):
    db = tmp_path / "h.db"
    h = History(db)
    h.write(event(parse_time("2026-01-01T10:00:00", "")))
    h.write(event(parse_time("2026-01-01T12:00:00", ""), station="s2"))
    h.close()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[history]\npath = "{db}"\n')
    base = [sys.executable, "-m", "daemon.cli", "history", "export", "--config", str(cfg)]
    out = subprocess.run(base + ["--since", "2026-01-01T11:00:00", "--format", "jsonl"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    assert [json.loads(line)["station"] for line in out.splitlines()] == ["s2"]
    out = subprocess.run(base + ["--until", "2026-01-01T11:00:00", "--format", "csv"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.splitlines()[1].startswith("2026-01-01T10:00:00.000+00:00,s1,customer")
    bad = subprocess.run(base + ["--since", "noon"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--since: expected an ISO 8601" in bad.stderr


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("add"), st.integers(0, 4), st.integers(0, 3000)),
                          st.just(("pop",)), st.just(("trim",))), max_size=40),
       st.integers(1, 20000))
def test_rows_waiting_for_the_disk_stay_within_their_bound(ops, limit):
    """Whatever the disk does, the waiting rows are counted exactly, kept in commit order,
    and past the bound only the oldest go (and are counted)."""
    from daemon.history import Unwritten

    waiting, model, lost, written = Unwritten(limit), [], 0, 0
    seq = 0
    for op in ops:
        if op[0] == "add":
            rows = [({"seq": (seq := seq + 1), "pad": "x" * op[2]}, None) for _ in range(op[1])]
            waiting.add(rows, [], [])
            model += [rows] if rows else []
        elif op[0] == "pop" and waiting:
            assert waiting.first()[0] == model[0]
            written += len(model.pop(0))
            waiting.pop()
        elif op[0] == "trim":
            gone = waiting.trim()
            lost += gone
            while sum(len(b) for b in model) > waiting.rows:
                model.pop(0)
            assert waiting.bytes <= limit or len(model) <= 1
        assert waiting.rows == sum(len(b) for b in model) and bool(waiting) == bool(model)
    assert waiting.rows + lost + written == seq  # every row: waiting, written or counted lost
