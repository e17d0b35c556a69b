import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon import cli
from emoclap.audio import write_wav
from tests.speech import RATE, dialogue

REPO = Path(__file__).resolve().parent.parent
EMOTIONS = {"pleasant", "aroused", "dominant", "credible", "interested", "positive", "purchase_intention"}


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Stereo: two utterances on the left (staff), one on the right (customer)."""
    folder = tmp_path_factory.mktemp("audio")
    left, left_spans = dialogue([0.6, "Good morning, can I help you?", 1.2,
                                 "This model is on sale this week.", 0.8], folder)
    right, right_spans = dialogue([2.4, "Yes, I would like to see it."], folder)
    right = np.concatenate([right, np.zeros(left.size - right.size, np.float32)])
    path = folder / "dialogue.wav"
    write_wav(path, np.stack([left, right]), RATE)
    return path, {"channel0": left_spans, "channel1": right_spans}


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_jsonl_one_line_per_utterance_per_channel(recording, tiny_bundle, capsys, tmp_path):
    path, spans = recording
    code, out, err = run(capsys, "score", str(path), "--bundle", str(tiny_bundle), "--role", "customer",
                         "--prompts", str(REPO / "prompts"), "--cache", str(tmp_path / "c.sqlite"))
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    by_station = {s: [r for r in rows if r["station"] == s] for s in spans}
    for station, known in spans.items():
        assert len(by_station[station]) == len(known)
        for row, (onset, offset) in zip(by_station[station], known):
            assert row["file"] == str(path)
            assert abs(row["start"] + 0.2 - onset) < 0.15 and abs(row["end"] - 0.2 - offset) < 0.15
            assert row["duration"] == pytest.approx(row["end"] - row["start"], abs=0.002)
            assert set(row["scores"]) == EMOTIONS
            assert all(0.0 <= v <= 1.0 for v in row["scores"].values())
    # Different utterances get different scores from the same model.
    assert rows[0]["scores"] != rows[1]["scores"]


def test_roles_per_channel_and_csv(recording, tiny_bundle, capsys):
    path, spans = recording
    code, out, err = run(capsys, "score", str(path), "--bundle", str(tiny_bundle), "--prompts",
                         str(REPO / "prompts"), "--cache", "", "--format", "csv", "--role", "staff,customer")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3
    staff = [r for r in rows if r["station"] == "channel0"]
    customer = [r for r in rows if r["station"] == "channel1"]
    # Staff are not scored at all (privacy.scored_roles defaults to customers): times only.
    assert len(staff) == 2 and all(r["role"] == "staff" and r[e] == "" for r in staff for e in EMOTIONS)
    assert all(r["role"] == "customer" and 0 <= float(r["purchase_intention"]) <= 1 for r in customer)
    assert float(customer[0]["start"]) == pytest.approx(spans["channel1"][0][0] - 0.2, abs=0.15)


def test_bad_files_are_reported_and_the_rest_scored(recording, tiny_bundle, capsys, tmp_path):
    path, _ = recording
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    code, out, err = run(capsys, "score", str(text), str(tmp_path / "missing.wav"), str(path),
                         "--bundle", str(tiny_bundle), "--prompts", str(REPO / "prompts"), "--cache", "")
    assert code == 1
    assert len(out.splitlines()) == 3
    lines = err.strip().splitlines()
    assert any(f"{text}: cannot read audio" in line for line in lines)
    assert any(f"{tmp_path / 'missing.wav'}: no such file" in line for line in lines)


def test_broken_prompt_file_is_reported_and_others_used(recording, tiny_bundle, capsys, tmp_path):
    path, _ = recording
    prompts = Path(shutil.copytree(REPO / "prompts", tmp_path / "p", ignore=shutil.ignore_patterns("alt*")))
    (prompts / "pleasant.toml").write_text("label = 'x'\n[negative\n")
    code, out, err = run(capsys, "score", str(path), "--bundle", str(tiny_bundle), "--prompts",
                         str(prompts), "--cache", "", "--role", "customer")
    assert code == 1
    assert f"{prompts / 'pleasant.toml'}:2: invalid TOML" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3 and set(rows[0]["scores"]) == EMOTIONS - {"pleasant"}


def test_bad_bundle_exits_2(recording, tmp_path, capsys):
    code, out, err = run(capsys, "score", str(recording[0]), "--bundle", str(tmp_path))
    assert code == 2 and out == "" and "manifest is missing" in err


def test_console_entry_point_and_registration(recording, tiny_bundle, capsys):
    @cli.command("echo-test", "test command", cli.arg("word"))
    def echo(args):
        print(args.word)
        return 3
    try:
        assert run(capsys, "echo-test", "hi")[:2] == (3, "hi\n")
    finally:
        del cli.COMMANDS["echo-test"]
    proc = subprocess.run([sys.executable, "-m", "daemon.cli", "score", str(recording[0]), "--bundle",
                           str(tiny_bundle), "--prompts", str(REPO / "prompts"), "--cache", ""],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    # No role given: speakers unknown (`auto`), not scored by the default privacy policy.
    assert len(rows) == 3 and all(r["role"] == "auto" and r["scores"] is None for r in rows)
    assert "role 'auto' is not scored" in proc.stderr and "--role customer" in proc.stderr


def test_a_policy_that_scores_staff_says_why_it_should_not(recording, tiny_bundle, capsys, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[privacy]\nscored_roles = ["customer", "staff"]\n')
    code, out, err = run(capsys, "score", str(recording[0]), "--bundle", str(tiny_bundle), "--role", "staff",
                         "--prompts", str(REPO / "prompts"), "--cache", "", "--config", str(config))
    assert code == 0, err
    assert all(json.loads(line)["scores"] for line in out.splitlines())
    assert "AI Act, Article 5(1)(f)" in err


def test_daemon_never_imports_torch():
    code = ("import sys, daemon.cli, daemon.batcher, daemon.prompt_bank, emoclap.rolling; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_segments_with_the_daemons_configured_vad(recording, tiny_bundle, capsys, tmp_path):
    """`--config` takes the [segmenter] settings the daemon runs with: without padding,
    utterances start at the speech itself instead of 0.2 s before it."""
    path, spans = recording
    config = tmp_path / "config.toml"
    config.write_text("[segmenter]\npre_padding_ms = 0\npost_padding_ms = 0\n")
    code, out, err = run(capsys, "score", str(path), "--bundle", str(tiny_bundle),
                         "--prompts", str(REPO / "prompts"), "--config", str(config))
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == sum(len(s) for s in spans.values())
    for station, known in spans.items():
        mine = [r for r in rows if r["station"] == station]
        for row, (onset, offset) in zip(mine, known):
            assert abs(row["start"] - onset) < 0.1 and abs(row["end"] - offset) < 0.15
    config.write_text("[segmenter]\nmin_utterance_s = -1\n")
    code, _, err = run(capsys, "score", str(path), "--bundle", str(tiny_bundle),
                       "--config", str(config))
    assert code == 2 and "config.toml: segmenter: need 0 <= min_utterance_s" in err
