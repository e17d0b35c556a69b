"""The refusal counts /healthz reports: what happened in the last window, at any rate,
in bounded memory."""
from hypothesis import given, strategies as st

from daemon.metrics import RecentCounts, RecentLatency


@given(st.lists(st.tuples(st.sampled_from(["ws_full", "ingest bad_frame", "unauthorized"]),
                          st.floats(0, 500, allow_nan=False), st.integers(1, 1000)), max_size=60),
       st.floats(0, 600, allow_nan=False))
def test_counts_are_the_events_of_the_last_window(events, later):
    recent = RecentCounts(60.0)
    events.sort(key=lambda e: e[1])  # time moves forward
    for reason, at, n in events:
        recent.add(reason, at, n)
    now = (events[-1][1] if events else 0.0) + later
    want: dict[str, int] = {}
    for reason, at, n in events:
        if int(at) > now - 60.0:  # one-second buckets: an event is kept with its second
            want[reason] = want.get(reason, 0) + n
    assert recent.counts(now) == want
    assert len(recent._buckets) <= 61


def test_a_flood_keeps_one_bucket_a_second():
    recent = RecentCounts(60.0)
    for i in range(100_000):
        recent.add("ingest bad_frame", 1000 + i / 1000)  # 1,000 a second for 100 s
    assert len(recent._buckets) <= 61
    assert recent.counts(1100.0) == {"ingest bad_frame": 59_000}


@given(st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.floats(0, 30, allow_nan=False)), max_size=200),
       st.floats(0, 100, allow_nan=False))
def test_latency_p99_is_of_the_window_only(values, later):
    recent = RecentLatency(60.0)
    values.sort()
    for at, seconds in values:
        recent.add(seconds, at)
    now = (values[-1][0] if values else 0.0) + later
    kept = sorted(s for at, s in values if at > now - 60.0)
    got = recent.p99(now)
    if not kept:
        assert got is None
    else:
        assert got == (kept[min(len(kept) - 1, int(0.99 * len(kept)))], len(kept))
        assert got[0] <= max(kept)
