"""`emoclap-train calibrate`: the Platt solver, the calibration measures, the prompt-file
rewrite, and the command end to end on the tiny bundle and the small synthetic corpus,
checked against the daemon's own encoder and prompt bank."""
from __future__ import annotations

import difflib
import json
import math
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from emoclap.audio import read_mono
from emoclap.prompts import PromptError, knob_text, parse_prompt_file, set_knobs
from emoclap.zeroshot import bipolar_scores
from trainer.cli import main
from trainer.platt import Refused, platt_fit
from trainer.reliability import brier, expected_calibration_error, log_loss, reliability_bins

REPO = Path(__file__).resolve().parent.parent
KNOB_LINE = re.compile(r"""^\s*(["']?)(temperature|bias)\1\s*=""")
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


# --- the solver ---------------------------------------------------------------------------

@FAST
@given(a=st.floats(0.5, 300), b=st.floats(-4, 4), n=st.integers(20, 400), spread=st.floats(0.1, 6),
       seed=st.integers(0, 2**32 - 1))
@example(a=282.0, b=0.0, n=20, spread=1.0, seed=1)  # a steep slope far from zero margin
@example(a=282.0, b=4.0, n=20, spread=0.125, seed=1)  # every probability within 1e-5 of 1
@example(a=282.0, b=3.0, n=20, spread=0.5, seed=1)
def test_platt_recovers_a_and_b_exactly_from_their_own_probabilities(a, b, n, spread, seed):
    m = np.random.default_rng(seed).normal(0.03, spread / a, n)  # a·sd(m) ≈ spread
    assume(m.std() > 0)
    fit = platt_fit(m, sigmoid(a * m + b), l2=0.0)
    assert fit.a == pytest.approx(a, rel=1e-5, abs=1e-6)
    # b trades off against a through the margins' offset: a's relative error moves b by
    # that much times a·mean(m) (8.5 logits at a = 282).
    assert fit.b == pytest.approx(b, rel=1e-5, abs=1e-6 * (1 + a * abs(m.mean())))


@settings(max_examples=25, deadline=None)
@given(a=st.floats(2, 200), b=st.floats(-1.5, 1.5), spread=st.floats(0.5, 3), seed=st.integers(0, 2**32 - 1))
def test_platt_recovers_a_and_b_from_sampled_labels_within_their_standard_error(a, b, spread, seed):
    rng = np.random.default_rng(seed)
    m = rng.normal(0.0, spread / a, 4000)
    y = (rng.random(m.size) < sigmoid(a * m + b)).astype(int)
    fit = platt_fit(m, y)
    p = sigmoid(a * m + b)
    w = p * (1 - p)
    fisher = np.array([[w @ (m * m), w @ m], [w @ m, w.sum()]])
    se_a, se_b = np.sqrt(np.diag(np.linalg.inv(fisher)))
    assert abs(fit.a - a) < 5 * se_a and abs(fit.b - b) < 5 * se_b


def test_platt_stays_finite_on_separable_samples_and_refuses_degenerate_ones():
    m = np.linspace(-0.01, 0.01, 40)
    fit = platt_fit(m, (m > 0).astype(int))  # perfectly separable: the ridge keeps A finite
    assert 0 < fit.a < 1e6 and math.isfinite(fit.b)
    for margins, labels, why in [(m, np.ones(40), "every label is 1"), (m, np.zeros(40), "every label is 0"),
                                 (np.full(40, 0.2), (m > 0).astype(int), "same margin"),
                                 (np.array([]), np.array([]), "0 margins"),
                                 (np.r_[m[:-1], np.nan], (m > 0).astype(int), "finite")]:
        with pytest.raises(Refused, match=why):
            platt_fit(margins, labels)


@FAST
@given(m=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=60),
       bits=st.lists(st.integers(0, 1), min_size=60, max_size=60), slope=st.none() | st.floats(1e-3, 1000))
def test_platt_never_returns_nan_on_hostile_margins(m, bits, slope):
    y = np.array(bits[:len(m)])
    try:
        fit = platt_fit(np.array(m, np.float64), y, slope=slope)
    except Refused:
        return
    assert math.isfinite(fit.a) and math.isfinite(fit.b)


def test_a_fixed_slope_fits_the_bias_alone():
    rng = np.random.default_rng(3)
    m = rng.normal(0, 0.05, 300)
    y = (rng.random(300) < sigmoid(40 * m - 0.7)).astype(int)
    fit = platt_fit(m, y, slope=1000.0)
    assert fit.a == pytest.approx(1000.0)
    assert np.sum(sigmoid(1000.0 * m + fit.b) - y) == pytest.approx(0.0, abs=1e-6)  # the bias's optimum


# --- the measures -------------------------------------------------------------------------

def test_ece_brier_and_log_loss_on_hand_worked_examples():
    assert expected_calibration_error([0.1, 0.1, 0.9, 0.9], [0, 0, 1, 1]) == pytest.approx(0.1)
    assert expected_calibration_error([0.25] * 4, [1, 0, 0, 0]) == pytest.approx(0.0)
    assert expected_calibration_error([0.0, 1.0], [1, 0]) == pytest.approx(1.0)  # 1.0 is in the last bin
    assert expected_calibration_error([0.60, 0.64], [1, 1]) == pytest.approx(0.38)  # one bin: [0.6, 0.667)
    # Two bins: [0.2, 0.267) holds 0.2 and 0.25 (rate 1/2, mean 0.225); [0.8, 0.867) holds 0.8 (rate 1).
    assert expected_calibration_error([0.2, 0.25, 0.8], [0, 1, 1]) == pytest.approx(2 / 3 * 0.275 + 1 / 3 * 0.2)
    assert brier([0.5, 1.0], [1, 1]) == pytest.approx(0.125)
    assert log_loss([0.5], [1]) == pytest.approx(math.log(2))
    assert log_loss([0.0], [1]) == pytest.approx(-math.log(1e-7))  # clipped, not infinite
    for probs, labels in [([0.5], [1, 0]), ([1.5], [1]), ([0.5], [2]), ([math.nan], [1])]:
        with pytest.raises(ValueError):
            expected_calibration_error(probs, labels)


@FAST
@given(st.lists(st.tuples(st.floats(0, 1), st.integers(0, 1)), min_size=1, max_size=200))
def test_reliability_bins_account_for_every_score(pairs):
    p, y = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    bins = reliability_bins(p, y)
    assert sum(b["count"] for b in bins) == len(pairs)
    assert all(b["low"] - 1e-12 <= b["mean_score"] <= b["high"] + 1e-12 for b in bins)
    assert 0 <= expected_calibration_error(p, y) <= 1


# --- the prompt-file rewrite --------------------------------------------------------------

def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")  # TOML refuses a raw DEL


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
               max_size=30).filter(lambda s: s.strip())
COMMENT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(lambda s: "# " + s)


@st.composite
def prompt_files(draw):
    """Prompt files written as people write them: comments, blank lines, any key order,
    quoted keys, multi-line arrays, existing knobs with comments, CRLF, no final newline."""
    statements = [f"label = {_toml_string(draw(TEXT))}"]
    if draw(st.booleans()):
        statements.append(f"key_word = {_toml_string(draw(TEXT))}")
    if draw(st.booleans()):
        statements.append(draw(st.sampled_from(['roles = ["customer"]', 'roles = [\n  "customer", # who\n  "staff",\n]'])))
    for knob, values in (("temperature", st.floats(0.01, 1000)), ("bias", st.floats(-100, 100))):
        if draw(st.booleans()):
            key = draw(st.sampled_from([knob, f'"{knob}"']))
            value = draw(st.sampled_from([knob_text(draw(values)), str(int(draw(values)) or 1)]))
            tail = draw(st.sampled_from(["", "  # set by hand", "#x"]))
            statements.append(f"{key} = {value}{tail}")
    statements = draw(st.permutations(statements))
    lines = [draw(COMMENT)] if draw(st.booleans()) else []
    for s in statements:
        lines.append(s)
        lines += draw(st.lists(st.sampled_from(["", draw(COMMENT)]), max_size=2))
    for pole in ("negative", "positive"):
        lines += [f"[{pole}]", f"label = {_toml_string(draw(TEXT))}", f"en = [{_toml_string(draw(TEXT))}]", ""]
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(lines)
    return text if draw(st.booleans()) else text.rstrip("\r\n")


@FAST
@given(text=prompt_files(), temperature=st.floats(1e-6, 1000), bias=st.floats(-100, 100))
def test_set_knobs_changes_only_the_knob_lines(text, temperature, bias):
    before = parse_prompt_file(text, "x")
    new = set_knobs(text, temperature, bias)
    after = parse_prompt_file(new, "x")
    assert after.temperature == float(knob_text(temperature)) and after.bias == float(knob_text(bias))
    assert (after.label, after.roles, after.negative, after.positive) == \
        (before.label, before.roles, before.negative, before.positive)
    changed = [line for line in difflib.ndiff(text.splitlines(), new.splitlines()) if line[:2] in ("- ", "+ ")]
    assert all(KNOB_LINE.match(line[2:]) for line in changed), changed
    assert len(changed) <= 4
    assert ("\r\n" in new) == ("\r\n" in text)
    assert set_knobs(new, temperature, bias) == new  # a second rewrite changes nothing


@FAST
@given(text=prompt_files(), junk=st.text(max_size=8), where=st.floats(0, 1))
def test_set_knobs_on_hostile_text_is_a_prompt_error_or_a_correct_rewrite(text, junk, where):
    at = int(where * len(text))
    broken = text[:at] + junk + text[at:]
    try:
        new = set_knobs(broken, 12.5, -0.25, "prompts/x.toml")
    except PromptError as exc:
        assert str(exc).startswith("prompts/x.toml")
        return
    assert (parse_prompt_file(new, "x").temperature, parse_prompt_file(new, "x").bias) == (12.5, -0.25)


@pytest.mark.parametrize("temperature, bias, field", [(math.nan, 0, "temperature"), (0.0, 0, "temperature"),
                                                      (1000.5, 0, "temperature"), (-1, 0, "temperature"),
                                                      (1, math.inf, "bias"), (1, -100.5, "bias")])
def test_set_knobs_refuses_values_outside_the_files_limits(temperature, bias, field):
    text = (REPO / "prompts" / "pleasant.toml").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match=field):
        set_knobs(text, temperature, bias)


# --- the command --------------------------------------------------------------------------

def calibrate(capsys, *args) -> tuple[int, str, str]:
    code = main(["calibrate", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def swap_poles(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("[negative]", "[@]").replace("[positive]", "[negative]").replace("[@]", "[positive]"),
                    encoding="utf-8")


def daemon_scores(bundle: Path, prompts: Path, corpus: Path, emotions: list[str]) -> dict:
    """emotion → (the daemon's scores, labels) of every clip the emotion is labelled on, for
    the roles its file names: its encoder and its prompt bank, reading the files as written."""
    from daemon.encoder import AudioEncoder, TextEncoder
    from daemon.prompt_bank import PromptBank
    from emoclap.bundle import load_bundle
    from trainer.labels import label_emotion
    from trainer.manifest import load_manifest

    b = load_bundle(bundle)
    vectors = PromptBank(prompts, TextEncoder(b, "cpu")).vectors
    utts = load_manifest(corpus / "manifest.jsonl")
    embs = AudioEncoder(b, "cpu").encode([read_mono(u.audio) for u in utts])
    out = {}
    for emotion in emotions:
        k = vectors.names.index(emotion)
        labels, roles = label_emotion(utts, emotion).labels, vectors.roles[k]
        rows = [i for i, u in enumerate(utts) if labels[i] >= 0 and embs[i] is not None
                and (roles is None or u.role in roles)]
        out[emotion] = bipolar_scores(np.stack([embs[i] for i in rows]), vectors)[:, k], labels[rows]
    return out


@pytest.mark.timeout(120)
def test_calibrate_end_to_end_writes_knobs_the_daemon_scores_as_reported(tiny_bundle, small_corpus, tmp_path,
                                                                          capsys):
    prompts = shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    shipped = {p.name: p.read_bytes() for p in prompts.glob("*.toml")}
    manifest = small_corpus / "manifest.jsonl"
    common = ("--bundle", tiny_bundle, "--prompts", prompts, "--holdout", "0", "--min-per-class", "3")

    code, out, _ = calibrate(capsys, manifest, *common, "--dry-run", "--out", tmp_path / "r1")
    assert code == 0
    assert {p.name: p.read_bytes() for p in prompts.glob("*.toml")} == shipped  # a dry run writes nothing
    first = json.loads((tmp_path / "r1" / "report.json").read_text())
    for name, entry in first["emotions"].items():
        if entry["status"] == "written":
            assert f"+++ {prompts / (name + '.toml')}" in out
        if "ranks backwards" in (entry.get("reason") or ""):
            swap_poles(prompts / f"{name}.toml")  # random weights: a random half of the prompts rank backwards
    swapped = {p.name: p.read_bytes() for p in prompts.glob("*.toml")}

    code, out, _ = calibrate(capsys, manifest, *common, "--out", tmp_path / "r2")
    assert code == 0 and "| emotion | status |" in out
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    written = [n for n, e in report["emotions"].items() if e["status"] == "written"]
    assert len(written) >= 3, report["emotions"]
    daemon = daemon_scores(tiny_bundle, prompts, small_corpus, written)
    for name, entry in report["emotions"].items():
        path = prompts / f"{name}.toml"
        if name not in written:
            assert path.read_bytes() == swapped[path.name], name
            continue
        old, new = swapped[path.name].decode(), path.read_text(encoding="utf-8")
        changed = [line for line in difflib.ndiff(old.splitlines(), new.splitlines()) if line[:2] in ("- ", "+ ")]
        assert sorted(KNOB_LINE.match(c[2:]).group(2) for c in changed) == ["bias", "temperature"]
        fitted = entry["fitted"]
        assert fitted["after"]["log_loss"] < fitted["before"]["log_loss"]
        # The daemon, reading the rewritten file, scores the clips as calibrate said it would.
        scores, labels = daemon[name]
        assert len(labels) == fitted["after"]["n"]
        assert expected_calibration_error(scores, labels) == pytest.approx(fitted["after"]["ece"], abs=1e-5)
        assert brier(scores, labels) == pytest.approx(fitted["after"]["brier"], abs=1e-6)
    # Platt scaling minimises log-loss, not ECE: on about 30 clips one emotion's ECE can rise
    # (a constant 0.5 on a balanced sample has an ECE near 0), but over the emotions it falls.
    ece = {when: sum(report["emotions"][n]["fitted"][when]["ece"] * report["emotions"][n]["fitted"][when]["n"]
                     for n in written) for when in ("before", "after")}
    assert ece["after"] < ece["before"]
    png = (tmp_path / "r2" / "reliability.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 300 and height > 300
    import matplotlib.image
    assert matplotlib.image.imread(tmp_path / "r2" / "reliability.png").shape[:2] == (height, width)

    calibrated = {p.name: p.read_bytes() for p in prompts.glob("*.toml")}
    code, _, _ = calibrate(capsys, manifest, *common, "--out", tmp_path / "r3")
    again = json.loads((tmp_path / "r3" / "report.json").read_text())
    assert code == 0 and {p.name: p.read_bytes() for p in prompts.glob("*.toml")} == calibrated
    for name in written:
        assert again["emotions"][name]["status"] == "unchanged"
        assert again["emotions"][name]["A"] == pytest.approx(report["emotions"][name]["A"], rel=1e-9)

    # A prompt that ranks backwards is refused, and its file left as it was.
    name = written[0]
    swap_poles(prompts / f"{name}.toml")
    backwards = (prompts / f"{name}.toml").read_bytes()
    code, out, _ = calibrate(capsys, manifest, *common, "--emotion", name, "--out", tmp_path / "r4")
    assert code == 0 and "ranks backwards" in out
    assert (prompts / f"{name}.toml").read_bytes() == backwards


@pytest.mark.timeout(60)
def test_calibrate_holds_out_sessions_and_counts_what_it_left_out(tiny_bundle, small_corpus, tmp_path, capsys):
    prompts = shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    lines = (small_corpus / "manifest.jsonl").read_text().splitlines()
    for i in range(5):  # five lines without a pleasant rating
        line = json.loads(lines[i])
        line["audio"] = str(small_corpus / line["audio"])
        for scores in line["ratings"].values():
            scores.pop("pleasant", None)
        lines[i] = json.dumps(line)
    others = [json.loads(x) for x in lines[5:]]
    for line in others:
        line["audio"] = str(small_corpus / line["audio"])
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines[:5] + [json.dumps(x) for x in others]) + "\n")
    code, out, _ = calibrate(capsys, manifest, "--bundle", tiny_bundle, "--prompts", prompts,
                             "--emotion", "pleasant", "--min-per-class", "2", "--out", tmp_path / "r", "--dry-run")
    assert code == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert len(report["sessions"]["held_out"]) == 1 and len(report["sessions"]["fitted"]) == 2
    entry = report["emotions"]["pleasant"]
    assert entry["skipped"]["unrated"] == 5 and "5 unrated" in out
    assert entry["held_out"]["before"]["n"] > 0 and entry["fitted"]["before"]["n"] > 0
    assert "held out: " in (tmp_path / "r" / "report.md").read_text()
    assert set(report["not_calibrated"]) == {"aroused", "credible", "dominant", "interested", "positive",
                                             "purchase_intention"}


def test_calibrate_refuses_bad_inputs_with_a_clear_message(tiny_bundle, small_corpus, tmp_path, capsys):
    manifest = small_corpus / "manifest.jsonl"
    prompts = shutil.copytree(REPO / "prompts", tmp_path / "prompts")
    (prompts / "pleasant.toml").write_text("label = 'x'\n[negative\n", encoding="utf-8")
    code, _, err = calibrate(capsys, manifest, "--bundle", tiny_bundle, "--prompts", prompts)
    assert code == 2 and f"{prompts / 'pleasant.toml'}:2" in err

    code, _, err = calibrate(capsys, manifest, "--bundle", tmp_path / "nope", "--prompts", REPO / "prompts")
    assert code == 2 and "nope: bundle folder does not exist" in err

    calm = tmp_path / "calm"
    calm.mkdir()
    (calm / "calm.toml").write_text('label = "Calm"\n[negative]\nlabel = "Tense"\nen = ["I am tense."]\n'
                                    '[positive]\nlabel = "Calm"\nen = ["I am calm."]\n', encoding="utf-8")
    code, _, err = calibrate(capsys, manifest, "--bundle", tiny_bundle, "--prompts", calm)
    assert code == 2 and "no emotion to calibrate" in err and "calm" in err and "pleasant" in err

    for args, message in [(("--holdout", "1"), "--holdout"), (("--holdout-sessions", "s9"), "no session s9"),
                          (("--min-per-class", "0"), "--min-per-class"), (("--emotion", "calm"), "--emotion calm")]:
        code, _, err = calibrate(capsys, manifest, "--bundle", tiny_bundle, "--prompts", REPO / "prompts", *args)
        assert code == 2 and message in err, (args, err)

    broken = tmp_path / "broken"
    shutil.copytree(small_corpus, broken)
    first = json.loads((broken / "manifest.jsonl").read_text().splitlines()[0])
    (broken / first["audio"]).write_bytes(b"RIFF junk")
    code, _, err = calibrate(capsys, broken / "manifest.jsonl", "--bundle", tiny_bundle, "--prompts",
                             REPO / "prompts", "--dry-run", "--out", tmp_path / "r")
    assert code == 2 and "manifest line 1" in err and first["audio"] in err


def test_calibrate_embeds_clips_as_the_daemon_does(tiny_bundle):
    from daemon.encoder import AudioEncoder, TextEncoder
    from emoclap.bundle import load_bundle
    from trainer.bundle_towers import AudioEmbedder, text_embedder

    bundle = load_bundle(tiny_bundle)
    rng = np.random.default_rng(0)
    clips = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in (8000, 16000 * 12, 16000 * 3)]
    ours = AudioEmbedder(bundle).embed(clips)  # the 12 s clip is two chunks of 6 s, averaged
    np.testing.assert_allclose(ours, AudioEncoder(bundle, "cpu").embed(clips), atol=1e-6)
    texts = ["I feel uneasy.", "My emotions are pleasant.", "私の気持ちは心地よいです。"]
    np.testing.assert_allclose(text_embedder(bundle)(texts), TextEncoder(bundle, "cpu").embed(texts), atol=1e-6)
