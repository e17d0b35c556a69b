"""The generic CSV importer on hostile rows: a clear message naming the row, or a valid corpus."""
import csv
import io
import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.importers.generic_csv import parse
from trainer.importers.writer import CorpusError, check
from trainer.manifest import ROLES

HEADER = ["path", "session", "speaker", "role", "annotator", "pleasant", "purchase_intention"]
hostile = st.one_of(st.text(max_size=12), st.sampled_from(
    ["", " ", "0", "1", "4", "7", "8", "-3", "4.5", "+5", "٣", "1e3", "NaN", "customer", "staff",
     "a.wav", "a.wav", "b.wav", "s1", "s2", "spk", '"', "\n", ",", "\x00", "\u202e"]))
row = st.lists(hostile, min_size=5, max_size=8)
header = st.one_of(st.just(HEADER), st.lists(st.sampled_from(HEADER + ["bogus", ""]), max_size=8))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=header, rows=st.lists(row, max_size=8), raw=st.text(max_size=40))
def test_hostile_rows_fail_clearly_or_parse_into_valid_clips(header, rows, raw):
    out = io.StringIO()
    csv.writer(out).writerows([header, *rows])
    text = out.getvalue() + raw
    name = "rows.csv"
    try:
        clips = parse(text, name, Path("/nonexistent"))
        problems = [p for p in check(clips) if "no such audio file" not in p]
    except CorpusError as exc:
        problems = exc.problems
        assert problems
    for p in problems:
        assert re.match(rf"^{re.escape(name)}:\d+: \S", p), p
    if not problems:
        for c in clips:
            assert c.role in ROLES and c.session.strip() and c.speaker.strip()
            for scores in c.ratings.values():
                assert all(isinstance(v, int) and 1 <= v <= 7 for v in scores.values())
                assert "purchase_intention" not in scores or c.role == "customer"
