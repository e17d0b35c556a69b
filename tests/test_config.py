"""Configuration: the shipped file loads; every mistake names its key; exit code 2."""
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parent.parent


def test_shipped_config_replays_stereo_dialogue_on_two_stations():
    cfg = load_config(REPO / "config.toml")
    assert cfg.server.host == "127.0.0.1" and cfg.history.store_audio is False
    staff, customer = cfg.stations
    assert (staff.role, staff.channel, customer.role, customer.channel) == ("staff", 0, "customer", 1)
    assert staff.file == customer.file and staff.file.startswith(str(REPO / "data/demo-corpus/dialogues"))
    assert staff.loop and staff.realtime
    assert cfg.bundle == str(REPO / "data/demo-bundle")


@pytest.mark.parametrize("text, message", [
    ('[[stations]]\nname="a"\nfile="x.wav"\n[[stations]]\nname="b"\nfile="x.wav"\nchannel="1"',
     "stations[1].channel: expected integer"),
    ('[[stations]]\nname="a"\nsource="mic"', "stations[0].source: expected one of replay, device"),
    ('[[stations]]\nname="a"\nfile="x"\n[[stations]]\nname="a"\nfile="x"',
     "stations[1].name: station 'a' is declared twice"),
    ('[[stations]]\nname="a"\nfile="x"\nrole="buyer"', "stations[0].role: expected one of"),
    ('[server]\nport = 70000', "server.port: expected 0 to 65535"),
    ('[server]\nhost = "0.0.0.0"', "server.token: required when server.host (0.0.0.0)"),
    ('[server]\nprot = 1', "server.prot: unknown key"),
    ('[segmenter]\nframe_ms = 25', "segmenter: frame_ms must be 10, 20 or 30"),
    ('[encoder]\nmax_batch = 0', "encoder.max_batch: must be greater than 0"),
    ('[stages]\nutterances = "udp://x"', "stages.utterances: expected an inproc://"),
    ('[history]\nstore_audio = "yes"', "history.store_audio: expected boolean"),
    ('[transcripts]\npublish = "yes"', "transcripts.publish: expected boolean"),
    ('[transcripts]\nkeep = true', "transcripts.keep: unknown key"),
    ('bundle = [1]', "bundle: expected string"),
    ('[rolling]\nhalf_life_s = nan', "rolling.half_life_s: expected a finite number"),
    ('[server]\ningest_max_rate = inf', "server.ingest_max_rate: expected a finite number"),
    ('[server]\ntoken = "pässword"', "server.token: a token is up to 256 printable ASCII"),
    ('[server]\ntoken = "two words"', "server.token: a token is up to 256 printable ASCII"),
])
def test_errors_name_the_key(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="config.toml")
    assert str(err.value).startswith("config.toml: ")
    assert message in str(err.value)


def test_transcripts_are_read_but_neither_published_nor_stored_by_default():
    t = parse_config("", source="config.toml").transcripts
    assert t.enabled and not t.publish and not t.store and not t.leave_encoder
    assert parse_config("[transcripts]\nstore = true", source="c").transcripts.leave_encoder


def test_token_allows_other_addresses_and_env_overrides(monkeypatch):
    cfg = parse_config('[server]\nhost = "0.0.0.0"\ntoken = "s3cret"')
    assert cfg.server.token == "s3cret"
    monkeypatch.setenv("EMOCLAP_TOKEN", "from-env")
    assert parse_config('[server]\nhost = "::"').server.token == "from-env"
    monkeypatch.setenv("EMOCLAP_TOKEN", "")  # set but empty: the file's token stays
    assert parse_config('[server]\nhost = "0.0.0.0"\ntoken = "s3cret"').server.token == "s3cret"


def test_relative_paths_follow_the_file(tmp_path):
    (tmp_path / "c.toml").write_text('bundle = "b"\n[history]\npath = "h.db"\n'
                                     '[stages]\nutterances = "ipc://run/u.sock"\n')
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.bundle == str(tmp_path / "b") and cfg.history.path == str(tmp_path / "h.db")
    assert cfg.stages.utterances == f"ipc://{tmp_path}/run/u.sock"


@pytest.mark.parametrize("text, message", [
    ('[[stations]]\nname = "a"\nfile = "x.wav"\nchannel = "left"\n',
     "stations[0].channel: expected integer"),
    ('bundle = "no-bundle"\n[[stations]]\nname = "a"\nfile = "missing.wav"\n',
     "stations[0].file: no such file: {folder}/missing.wav"),
])
def test_cli_exits_2_with_one_line_naming_the_key(tmp_path, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{cfg}: {message.format(folder=tmp_path)}" in proc.stderr
    assert "Traceback" not in proc.stderr
