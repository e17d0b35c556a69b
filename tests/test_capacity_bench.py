"""The capacity benchmark's own arithmetic: FLOP counted on a graph, the floor, the VAD
wait, the replay-chunk correction, the search, the workload and its --set parser."""
from __future__ import annotations

import math
import shutil
import string
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.capacity import parse_sets, search
from bench.floor import GraphFlops, Rates, floor_stations
from bench.probe import REPLAY_CHUNK, Probe, fed_at
from bench.service import write_config
from bench.workload import segment, tracks, vad_wait_s
from emoclap.audio import SAMPLE_RATE
from emoclap.segmenter import Segmenter, SegmenterOptions

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
K, STRIDE, CH, HID, OUT = 10, 5, 4, 8, 3


def _graph(folder: Path) -> Path:
    """waveform → Conv(1→4, k 10, stride 5) → MatMul(4→8) → mean over time → Gemm(8→3)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("wc", (CH, 1, K)), ("wm", (CH, HID)), ("wg", (HID, OUT)))]
    inits.append(numpy_helper.from_array(np.array([1, 1, -1], np.int64), "shape"))
    nodes = [helper.make_node("Reshape", ["waveform", "shape"], ["x"]),
             helper.make_node("Conv", ["x", "wc"], ["c"], kernel_shape=[K], strides=[STRIDE]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "wm"], ["m"]),
             helper.make_node("ReduceMean", ["m"], ["r"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["r", "wg"], ["embedding"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("waveform", TensorProto.FLOAT, [1, "n"])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, OUT])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = folder / "tower.onnx"
    onnx.save(model, str(path))
    return path


def _expected(samples: int) -> float:
    t = (samples - K) // STRIDE + 1
    return 2.0 * CH * t * K + 2.0 * t * HID * CH + 2.0 * OUT * HID


@lru_cache(maxsize=1)
def _flops() -> GraphFlops:
    import tempfile
    return GraphFlops(_graph(Path(tempfile.mkdtemp(prefix="capacity-graph-"))))


@FAST
@given(st.integers(min_value=K, max_value=40_000))
def test_graph_flops_are_counted_from_the_shapes_a_run_sees(samples):
    assert _flops()(samples) == {"fp32": pytest.approx(_expected(samples)), "int8": 0.0, "int8w": 0.0}


def test_int8_products_are_counted_apart_and_convolutions_stay_fp32(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = _graph(tmp_path)
    dst = tmp_path / "tower.int8.onnx"
    # As trainer.export quantises: matrix products only.
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
    counts = GraphFlops(dst)(16000)
    t = (16000 - K) // STRIDE + 1
    assert counts["int8"] == pytest.approx(2.0 * t * HID * CH + 2.0 * OUT * HID)
    assert counts["fp32"] == pytest.approx(2.0 * CH * t * K)


def test_8_bit_weight_products_are_counted_apart_at_their_own_kind(tmp_path):
    from trainer.export import quantize_weights_int8

    src = _graph(tmp_path)
    dst = tmp_path / "tower.int8w.onnx"
    quantize_weights_int8(src, dst)  # as `export --int8-weights` does: MatMul only, Gemm stays
    counts = GraphFlops(dst)(16000)
    t = (16000 - K) // STRIDE + 1
    assert counts["int8w"] == pytest.approx(2.0 * t * HID * CH)
    assert counts["fp32"] == pytest.approx(2.0 * CH * t * K + 2.0 * OUT * HID)
    assert counts["int8"] == 0.0


def test_the_floor_prices_each_precision_at_its_rate():
    rates = Rates(cores=2, fp32_1=100e9, fp32_all=180e9, int8_1=200e9, int8_all=350e9)
    load = {"fp32": 10e9, "int8": 20e9}  # FLOP per second of one station
    assert floor_stations(load, rates) == pytest.approx(2 / (0.1 + 0.1))
    assert floor_stations(load, rates, all_cores=True) == pytest.approx(1 / (10 / 180 + 20 / 350))
    no_int8 = Rates(cores=2, fp32_1=100e9, fp32_all=180e9)
    assert floor_stations(load, no_int8) == pytest.approx(2 / 0.3)
    weights = Rates(cores=2, fp32_1=100e9, fp32_all=180e9, int8w_1=150e9, int8w_all=250e9)
    load = {"fp32": 10e9, "int8": 0.0, "int8w": 30e9}
    assert floor_stations(load, weights) == pytest.approx(2 / (0.1 + 0.2))
    assert floor_stations(load, weights, all_cores=True) == pytest.approx(1 / (10 / 180 + 30 / 250))


@FAST
@given(st.integers(0, 100_000), st.integers(1, 20), st.integers(20, 5000), st.floats(1e9, 2e9))
def test_fed_at_is_the_start_of_the_replay_chunk_that_closed_the_utterance(end_frame, wait_frames, loop_chunks, t0):
    frame = 480
    loop = loop_chunks * REPLAY_CHUNK + 37  # a loop that is not whole chunks restarts the grid
    end = end_frame * frame / SAMPLE_RATE
    msg = {"time": t0 + end, "end": round(end, 3)}
    close = (end_frame + wait_frames) * frame
    fed = fed_at(msg, loop, wait_frames * frame / SAMPLE_RATE, frame)
    assert t0 + close / SAMPLE_RATE - 0.1 - 1e-6 <= fed <= t0 + close / SAMPLE_RATE
    offset = round((fed - t0) * SAMPLE_RATE) % loop
    assert offset % REPLAY_CHUNK == 0  # on the chunk grid of its loop


def _speech(tmp_path) -> np.ndarray:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng missing: run ./bootstrap test, which installs it")
    from tests.speech import say
    return say("Could I see the grey coat, please?", tmp_path)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([10, 20, 30]), st.integers(0, 900), st.integers(0, 600))
def test_vad_wait_is_what_the_segmenter_waits_after_an_utterance_ends(tmp_path, frame_ms, hangover, post):
    opts = SegmenterOptions(frame_ms=frame_ms, hangover_ms=hangover, post_padding_ms=post)
    audio = np.concatenate([np.zeros(8000, np.float32), _speech(tmp_path), np.zeros(32000, np.float32)])
    seg, step = Segmenter("s", opts), SAMPLE_RATE * frame_ms // 1000
    for i in range(0, audio.size, step):
        out = seg.push(audio[i:i + step])
        if out:
            closed_at = (i + step) / SAMPLE_RATE
            assert closed_at - out[0].end == pytest.approx(vad_wait_s(opts), abs=1e-9)
            return
    pytest.fail("the utterance was never closed")


class _Verdict:
    def __init__(self, capacity: int):
        self.capacity, self.calls = capacity, []

    def __call__(self, n: int) -> Probe:
        self.calls.append(n)
        return Probe(n, n <= self.capacity, "" if n <= self.capacity else "p99 400 ms")


@FAST
@given(st.integers(0, 600), st.integers(1, 32), st.integers(1, 512))
def test_search_brackets_the_capacity(capacity, start, max_n):
    verdict = _Verdict(capacity)
    probes = search(verdict, start, max_n, budget_s=60)
    assert len(verdict.calls) == len(set(verdict.calls))  # no N probed twice
    assert len(verdict.calls) <= 2 * math.log2(max_n) + 3
    passed = [p.n for p in probes if p.ok]
    failed = [p.n for p in probes if not p.ok]
    best = max(passed, default=0)
    if capacity >= max_n:
        assert best == max_n and not failed
    else:
        assert min(failed) - best <= max(1, math.ceil(0.05 * best))
        assert best <= capacity < min(failed)


def test_search_stops_when_the_configuration_does_not_start():
    calls = []

    def broken(n):
        calls.append(n)
        return Probe(n, False, "daemon: encoder.backend: unknown")
    assert [p.n for p in search(broken, 4, 64, 60)] == [4] and calls == [4]


def test_search_keeps_to_its_budget():
    assert len(search(_Verdict(10**6), 1, 10**6, budget_s=0.0)) == 1  # the first probe only


@FAST
@given(st.lists(st.text(string.printable, max_size=40), max_size=4))
def test_set_parser_takes_keys_or_names_the_bad_item(items):
    try:
        out = parse_sets(items)
    except ValueError as exc:
        assert str(exc).startswith("--set ")
        return
    assert all(isinstance(keys, dict) and keys for keys in out.values())


def test_set_parser_reads_toml_values_and_bare_words():
    assert parse_sets(["encoder.threads=2", 'encoder.backend="triton"', "provider=cuda",
                       "stages.workers=ipc:///tmp/w.ipc", "segmenter.hangover_ms = 300"]) == {
        "encoder": {"threads": 2, "backend": "triton"}, "": {"provider": "cuda"},
        "stages": {"workers": "ipc:///tmp/w.ipc"}, "segmenter": {"hangover_ms": 300}}
    for bad in ("threads", "=2", "encoder.=2", "a.b.c=1", "encoder.threads=1\nprovider=cpu"):
        with pytest.raises(ValueError, match="--set"):
            parse_sets([bad])


def test_workload_fills_half_of_each_loop_with_stations_out_of_step(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng missing: run ./bootstrap test, which installs it")
    opts = SegmenterOptions()
    work = tracks(tmp_path, 0.5, opts)
    assert 0.45 <= work.share <= 0.55
    assert len(work.segments) == len(work.clips)
    a, b = work.track(0), work.track(1)
    assert a.size == b.size == work.loop_samples and not np.array_equal(a, b)
    assert sorted(segment(np.tile(b, 2), opts, work.loop_s)) == pytest.approx(sorted(work.segments), abs=960)
    files = work.files(3)
    assert [f.name for f in files] == ["station-000-phased.wav", "station-001-phased.wav", "station-002-phased.wav"]
    # No two stations wrap their loops at the same moment, and each wraps in silence:
    # stations that all closed an utterance at once, once a loop, were the bench's tail.
    ends = []
    for i in range(8):
        t = work.track(i)
        assert np.abs(t[:160]).max() == 0 and np.abs(t[-160:]).max() == 0
        voiced = np.flatnonzero(np.abs(t) > 0)
        ends.append(voiced[-1])
    ends = np.sort(ends)
    assert ends[-1] - ends[0] > 2 * 16000
    assert max(np.sum(np.abs(ends - e) < 1600) for e in ends) <= 2  # not a burst, as before


def test_capacity_config_is_one_the_daemon_reads(tmp_path):
    from daemon.config import load_config

    files = [tmp_path / f"s{i}.wav" for i in range(3)]
    cfg = write_config(tmp_path, tmp_path / "bundle", files, 3, 8123, 2, roles=("customer",), channels=(0,),
                       sections={"": {"provider": "cpu"}, "encoder": {"max_batch": 1, "max_wait_ms": 5},
                                 "privacy": {"scored_roles": ["customer"]}})
    loaded = load_config(cfg)
    assert loaded.provider == "cpu" and loaded.server.port == 8123
    assert (loaded.encoder.threads, loaded.encoder.max_batch, loaded.encoder.max_wait_ms) == (2, 1, 5)
    assert [(s.role, s.channel, Path(s.file).name) for s in loaded.stations] == [
        ("customer", 0, "s0.wav"), ("customer", 0, "s1.wav"), ("customer", 0, "s2.wav")]


def test_an_int8_transcriber_is_priced_as_the_8_bit_weights_it_stores(tmp_path):
    import json

    from bench.floor import transcriber_kind

    for section, kind in (({"precision": "int8"}, "int8w"), ({"precision": "fp32"}, "fp32"), ({}, "fp32"),
                          (None, "fp32")):
        manifest = {"transcriber": section} if section is not None else {}
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        assert transcriber_kind(tmp_path) == kind
