"""`emoclapd triton-repository` and the Triton client's checks, without a server: the
generated config.pbtxt parsed back with Triton's own schema (tritonclient's
model_config_pb2), hostile option values, hostile [encoder] keys, and the start-up
check of a served model's signature and bundle."""
import dataclasses
import json
import tomllib

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from daemon import cli
from daemon.config import ConfigError, parse_config
from daemon.encoder import EncoderError
from daemon.triton import TritonOptions, check_model
from daemon.triton_repository import (BUNDLE_HASH_KEY, RepositoryError, RepositoryOptions, config_text,
                                      model_signature, parse_sizes, write_repository)
from emoclap.bundle import load_bundle
from tests.tiny_bundle import DIM

try:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
except ImportError:  # a missing extra is a setup error, not a reason to skip
    pytest.fail("tritonclient is missing: run ./bootstrap test (it installs the triton extra)",
                pytrace=False)


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


def parse(text: str):
    return text_format.Parse(text, mc.ModelConfig())


def test_repository_parses_back_with_tritons_schema(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    folder = write_repository(bundle, tmp_path / "repo", RepositoryOptions(
        max_batch=24, preferred=(2, 8), queue_delay_us=1500, instances=3, kind="KIND_CPU"))
    assert folder == tmp_path / "repo" / "emoclap_audio"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "emoclap-bundle.json"]
    assert (folder / "1" / "model.onnx").read_bytes() == bundle.audio_encoder.read_bytes()
    cfg = parse((folder / "config.pbtxt").read_text())
    assert (cfg.name, cfg.platform, cfg.backend, cfg.max_batch_size) == (
        "emoclap_audio", "onnxruntime_onnx", "onnxruntime", 24)
    inputs = {t.name: t for t in cfg.input}
    assert set(inputs) == {"waveform", "lengths"}
    assert (inputs["waveform"].data_type, list(inputs["waveform"].dims)) == (mc.TYPE_FP32, [-1])
    assert not inputs["waveform"].HasField("reshape")
    # The model's lengths are [batch]: Triton's [batch, 1], reshaped to [].
    assert (inputs["lengths"].data_type, list(inputs["lengths"].dims)) == (mc.TYPE_INT64, [1])
    assert inputs["lengths"].HasField("reshape") and list(inputs["lengths"].reshape.shape) == []
    (out,) = cfg.output
    assert (out.name, out.data_type, list(out.dims)) == ("embedding", mc.TYPE_FP32, [DIM])
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 1500
    (group,) = cfg.instance_group
    assert (group.count, group.kind) == (3, mc.ModelInstanceGroup.KIND_CPU)
    assert cfg.parameters[BUNDLE_HASH_KEY].string_value == bundle.hash
    info = json.loads((folder / "emoclap-bundle.json").read_text())
    assert info[BUNDLE_HASH_KEY] == bundle.hash and info["embedding_dim"] == DIM


def test_int8_bundle_gets_no_dynamic_batcher(tiny_bundle):
    """Batch mates shift dynamically quantised activations: requests run one by one.
    8-bit weights quantise activations row by row, so they batch as fp32 does."""
    bundle = dataclasses.replace(load_bundle(tiny_bundle), precision="int8")
    assert not parse(config_text(bundle, RepositoryOptions())).HasField("dynamic_batching")
    weights = dataclasses.replace(load_bundle(tiny_bundle), precision="int8-weights")
    assert parse(config_text(weights, RepositoryOptions())).HasField("dynamic_batching")


def test_cli_writes_then_refuses_to_overwrite(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "repo"
    assert cli.main(["triton-repository", str(tiny_bundle), str(out), "--kind", "KIND_CPU",
                     "--preferred", "4,8"]) == 0
    assert "tritonserver --model-repository" in capsys.readouterr().err
    cfg = parse((out / "emoclap_audio" / "config.pbtxt").read_text())
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8] and cfg.max_batch_size == 32
    assert cli.main(["triton-repository", str(tiny_bundle), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not list(out.glob(".*partial"))


@pytest.mark.parametrize("argv, named", [
    (["--max-batch", "0"], "--max-batch"), (["--preferred", "4,x"], "--preferred"),
    (["--preferred", "8,4"], "--preferred"), (["--preferred", "64"], "--preferred"),
    (["--queue-delay-us", "-1"], "--queue-delay-us"), (["--instances", "0"], "--instances"),
    (["--kind", "KIND_TPU"], "--kind"), (["--model", "../x"], "--model")])
def test_cli_bad_options_name_the_option(tiny_bundle, tmp_path, capsys, argv, named):
    assert cli.main(["triton-repository", str(tiny_bundle), str(tmp_path / "r"), *argv]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(max_batch=st.one_of(st.integers(-10, 5000), st.booleans(), st.floats(), st.text(max_size=5)),
       preferred=st.lists(st.integers(-5, 70), max_size=5),
       delay=st.one_of(st.integers(-10, 20_000_000), st.none()),
       instances=st.integers(-2, 300), kind=st.sampled_from(["KIND_GPU", "KIND_CPU", "GPU", "", "kind_gpu"]),
       model=st.text(max_size=140))
def test_options_are_valid_or_named(bundle, max_batch, preferred, delay, instances, kind, model):
    try:
        options = RepositoryOptions(max_batch=max_batch, preferred=tuple(preferred), queue_delay_us=delay,
                                    instances=instances, kind=kind, model=model)
    except RepositoryError as exc:
        assert str(exc).startswith("--"), exc
        return
    cfg = parse(config_text(bundle, options))
    assert (cfg.max_batch_size, list(cfg.dynamic_batching.preferred_batch_size)) == (max_batch, preferred)
    assert (cfg.instance_group[0].count, cfg.name) == (instances, model)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_preferred_sizes_parse_or_name_the_option(text):
    try:
        sizes = parse_sizes(text)
    except RepositoryError as exc:
        assert str(exc).startswith("--preferred:")
        return
    assert all(isinstance(s, int) and s >= 0 for s in sizes)


def test_description_cannot_break_out_of_the_comment(tiny_bundle):
    bundle = dataclasses.replace(load_bundle(tiny_bundle), description="x\nmax_batch_size: 1\r\n#")
    text = config_text(bundle, RepositoryOptions(max_batch=16))
    assert parse(text).max_batch_size == 16 and text.count("\n# ") == 0


# ---- [encoder] keys

@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(["backend", "triton_url", "triton_model", "triton_timeout_s"]),
       value=st.one_of(st.text(max_size=60), st.integers(), st.floats(), st.booleans(),
                       st.lists(st.integers(), max_size=2)))
def test_encoder_keys_are_valid_or_named(key, value):
    toml = f"[encoder]\n{key} = {json.dumps(value) if not isinstance(value, float) else repr(value)}\n"
    try:
        tomllib.loads(toml)
    except tomllib.TOMLDecodeError:
        assume(False)  # not a value TOML can carry (e.g. a 70-bit integer): the TOML tests' business
    try:
        cfg = parse_config(toml, "t.toml")
    except ConfigError as exc:
        assert str(exc).startswith(f"t.toml: encoder.{key}: "), exc
        return
    enc = cfg.encoder
    TritonOptions(enc.triton_url, enc.triton_model, enc.triton_timeout_s)  # what start-up builds
    assert enc.backend in ("onnxruntime", "triton")


def test_encoder_key_errors_name_the_key():
    for text, named in [('backend = "tensorrt"', "encoder.backend"),
                        ('triton_url = "grpc://h:8001"', "encoder.triton_url"),
                        ('triton_url = "h:70000"', "encoder.triton_url"),
                        ('triton_model = "a/b"', "encoder.triton_model"),
                        ("triton_timeout_s = 0", "encoder.triton_timeout_s"),
                        ("triton_timeout_s = 1e9", "encoder.triton_timeout_s")]:
        with pytest.raises(ConfigError, match=named):
            parse_config(f"[encoder]\n{text}\n")
    cfg = parse_config('[encoder]\nbackend = "triton"\ntriton_url = "[::1]:8001"\n')
    assert (cfg.encoder.backend, cfg.encoder.triton_url) == ("triton", "[::1]:8001")


# ---- what the client accepts from a server

def served(bundle, **change):
    inputs, outputs = model_signature(bundle.audio_encoder)
    meta = {"inputs": [{"name": t.name, "datatype": t.dtype, "shape": [str(d) for d in t.triton_shape()]}
                       for t in inputs],
            "outputs": [{"name": t.name, "datatype": t.dtype, "shape": [str(d) for d in t.triton_shape()]}
                        for t in outputs]}
    config = {"max_batch_size": 8, "parameters": {BUNDLE_HASH_KEY: {"string_value": bundle.hash}}}
    for key, value in change.items():
        (meta if key in meta else config)[key] = value
    return meta, config


def test_served_model_matches_or_is_refused_by_name(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert check_model(bundle, *served(bundle), "m") == 8
    wrong_dim = [{"name": "embedding", "datatype": "FP32", "shape": ["-1", str(DIM + 1)]}]
    for change, says in [({"parameters": {}}, "no emoclap_bundle_hash"),
                         ({"parameters": {BUNDLE_HASH_KEY: {"string_value": "f" * 64}}}, "another bundle"),
                         ({"max_batch_size": 0}, "max_batch_size is 0"),
                         ({"outputs": wrong_dim}, "output 'embedding'"),
                         ({"outputs": []}, "outputs are []"),
                         ({"inputs": [{"name": "waveform", "datatype": "FP16", "shape": ["-1", "-1"]},
                                      {"name": "lengths", "datatype": "INT64", "shape": ["-1", "1"]}]},
                          "input 'waveform' is FP16"),
                         ({"inputs": [{"name": "waveform", "datatype": "FP32", "shape": ["-1", "-1"]}]},
                          "inputs are ['waveform']")]:
        with pytest.raises(EncoderError, match="^m: .*" + says.replace("[", r"\[").replace("]", r"\]")):
            check_model(bundle, *served(bundle, **change), "m")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=3),
                           max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.dictionaries(st.sampled_from(["inputs", "outputs", "name"]), json_values, max_size=3),
       config=st.dictionaries(st.sampled_from(["max_batch_size", "parameters"]), json_values, max_size=2))
def test_hostile_metadata_is_refused_not_a_crash(bundle, meta, config):
    with pytest.raises(EncoderError):
        check_model(bundle, meta, config, "m")


# ---- the PyTriton host's command line (refused before PyTriton is needed)

@pytest.mark.parametrize("argv, named", [
    (["--grpc-port", "0"], "--grpc-port"), (["--metrics-port", "70000"], "--metrics-port"),
    (["--max-batch", "0"], "--max-batch"), (["--preferred", "2,2"], "--preferred"),
    (["--threads", "-1"], "--threads"), (["--model", ""], "--model")])
def test_host_options_are_refused_by_name(tiny_bundle, capsys, argv, named):
    from daemon import triton_host

    assert triton_host.main([str(tiny_bundle), *argv]) == 2
    assert named in capsys.readouterr().err


def test_host_refuses_a_broken_bundle(tmp_path, capsys):
    from daemon import triton_host

    assert triton_host.main([str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err
