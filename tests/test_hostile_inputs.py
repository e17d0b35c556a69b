"""Every parser of outside input, fed hostile input: a clear error naming the place, or a
valid result; never a traceback of another kind."""
import json
import socket

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import Config, ConfigError, parse_config
from daemon.history import HistoryError, parse_time
from emoclap.audio import AudioError, read_channels
from emoclap.bundle import BundleError, load_bundle

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(), st.text(max_size=12))
SECTIONS = ["segmenter", "encoder", "rolling", "server", "history", "stages"]
KEYS = ["bundle", "prompts", "provider", "port", "host", "token", "max_batch", "half_life_s",
        "aggressiveness", "frame_ms", "hwm", "utterances", "store_audio", "name", "role", "channel",
        "channels", "file", "source", "ingest_max_rate", "max_clients", "nonsense"]


def toml_value(v) -> str:
    if v is None or isinstance(v, str):
        return json.dumps(v or "")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
    return str(v)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), scalars, max_size=4),
       st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3),
                       max_size=3),
       st.lists(st.dictionaries(st.sampled_from(KEYS), scalars, max_size=5), max_size=2),
       st.text(max_size=60))
def test_config_parses_or_names_the_key(top, sections, stations, noise):
    text = "".join(f"{k} = {toml_value(v)}\n" for k, v in top.items())
    for name, table in sections.items():
        text += f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
    for table in stations:
        text += "[[stations]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
    for candidate in (text, noise, text + noise):
        try:
            cfg = parse_config(candidate, source="hostile.toml")
        except ConfigError as exc:
            assert str(exc).startswith("hostile.toml: ")
            continue
        assert isinstance(cfg, Config)
        for value in (cfg.rolling.half_life_s, cfg.server.ingest_max_rate, cfg.server.ping_interval_s):
            assert np.isfinite(value) and value > 0


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.floats().map(str), st.datetimes().map(lambda d: d.isoformat())))
def test_history_times_parse_or_are_refused(text):
    try:
        value = parse_time(text, "--since")
    except HistoryError as exc:
        assert str(exc).startswith("--since: ")
        return
    assert np.isfinite(value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300), st.sampled_from([b"", b"RIFF", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS"]))
def test_audio_files_read_or_are_refused_with_the_file_name(tmp_path, data, magic):
    path = tmp_path / "clip.wav"
    path.write_bytes(magic + data)
    try:
        audio = read_channels(path)
    except AudioError as exc:
        assert str(exc).startswith(str(path))
        return
    assert audio.dtype == np.float32 and audio.ndim == 2 and np.isfinite(audio).all()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=10)
MANIFEST_KEYS = ["format", "format_version", "sample_rate", "embedding_dim", "logit_scale", "languages",
                 "audio_encoder", "text_encoder", "tokenizer", "files"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(MANIFEST_KEYS), json_values, max_size=10), st.booleans())
def test_bundle_manifests_load_or_name_the_field(tmp_path, fields, valid_start):
    folder = tmp_path / "bundle"
    folder.mkdir(exist_ok=True)
    if valid_start:
        fields = {"format": "emoclap-bundle", "format_version": 1, "sample_rate": 16000, **fields}
    (folder / "manifest.json").write_text(json.dumps(fields))
    with pytest.raises(BundleError, match=str(folder)):
        load_bundle(folder)  # nothing here has model files whose hashes could match


METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT", "BREW"]
PATHS = ["/", "/index.html", "/healthz", "/metrics", "/ws", "/ingest", "/../etc/passwd", "/%00", "//",
         "/ws?token=%FF", "/metrics?token=" + "a" * 3000, "/static/../../x", "*"]


def test_http_requests_get_an_answer_and_never_a_500(tmp_path, tiny_bundle):
    import asyncio

    from tests.servicekit import service_config, with_service

    cfg = service_config(tmp_path, tiny_bundle, token="s3cret-token")
    rng = np.random.default_rng(0)

    def ask(port, request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
                    if b"\r\n\r\n" in data:
                        break
            except (socket.timeout, ConnectionResetError):
                pass
        return data

    async def body(svc):
        answers = []
        for i in range(120):
            method, path = METHODS[i % len(METHODS)], PATHS[int(rng.integers(len(PATHS)))]
            headers = [b"Host: x", b"Connection: close"]
            if rng.random() < 0.5:
                headers.append(b"Authorization: Bearer " + bytes(rng.integers(0, 256, int(rng.integers(0, 40)),
                                                                             dtype=np.uint8)).replace(b"\r", b"")
                               .replace(b"\n", b""))
            if rng.random() < 0.2:
                headers += [b"Upgrade: websocket", b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
                            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
            request = f"{method} {path} HTTP/1.1\r\n".encode() + b"\r\n".join(headers) + b"\r\n\r\n"
            answers.append((method, path, await asyncio.to_thread(ask, svc.parts.server.port, request)))
        return answers

    for method, path, answer in with_service(cfg, body):
        status = answer[9:12]
        # Malformed requests may be dropped by the HTTP parser without an answer; anything
        # answered is a deliberate status, never a server error.
        assert answer == b"" or status in (b"101", b"200", b"400", b"401", b"403", b"404", b"405",
                                           b"414", b"426", b"431", b"503"), (method, path, answer[:200])
        assert not answer.startswith(b"HTTP/1.1 500"), (method, path)


def test_toml_nesting_bomb_in_the_configuration_is_a_config_error():
    with pytest.raises(ConfigError, match="hostile.toml"):
        parse_config("x = " + "[" * 5000 + "]" * 5000, source="hostile.toml")


MANIFEST_FIELDS = ["audio", "session", "speaker", "role", "ratings", "dialogue", "start", "end",
                   "transcript", "extra"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(MANIFEST_FIELDS), json_values, max_size=8), st.text(max_size=30))
def test_manifest_lines_parse_or_name_line_and_field(tmp_path, fields, noise):
    from trainer.manifest import parse_line

    (tmp_path / "a.wav").write_bytes(b"")
    for text in (json.dumps(fields), noise, json.dumps({**fields, "audio": "a.wav"})):
        utt, problems = parse_line(text, tmp_path, 7)
        assert (utt is None) == bool(problems)
        assert all(p.startswith("line 7: ") for p in problems)
        if utt is not None:
            assert utt.role in ("customer", "staff") and utt.session and utt.speaker
