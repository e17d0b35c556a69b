import json

import numpy as np
import pytest

from emoclap.audio import write_wav
from trainer.manifest import ManifestError, load_manifest, write_manifest

RATINGS = {"ann1": {"pleasant": 5, "purchase_intention": 6}, "ann2": {"pleasant": 3}}


@pytest.fixture
def corpus_dir(tmp_path):
    write_wav(tmp_path / "a.wav", np.zeros(1600, dtype=np.float32))
    return tmp_path


def line(**overrides):
    base = {"audio": "a.wav", "session": "s1", "speaker": "spk1", "role": "customer",
            "ratings": RATINGS}
    base.update(overrides)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


def write(dir_, *lines):
    path = dir_ / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def problems(path):
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    return caught.value.problems


def test_good_lines_load_with_paths_relative_to_the_manifest(corpus_dir):
    path = write(corpus_dir, line(),
                 line(dialogue="d1", start=1.5, end=3.0, transcript="Hello.", role="customer"))
    first, second = load_manifest(path)
    assert first.audio == corpus_dir / "a.wav"
    assert first.ratings == RATINGS
    assert first.emotions == {"pleasant", "purchase_intention"}
    assert (second.dialogue, second.start, second.end, second.line) == ("d1", 1.5, 3.0, 2)


def test_round_trip_through_write_manifest(corpus_dir):
    original = load_manifest(write(corpus_dir, line(dialogue="d", start=0, end=1)))
    out = corpus_dir / "copy.jsonl"
    write_manifest(out, original)
    assert json.loads(out.read_text())["audio"] == "a.wav"
    assert load_manifest(out)[0].ratings == original[0].ratings


@pytest.mark.parametrize("bad, message", [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object, got list"),
    (line(audio=...), "line 2: field 'audio': missing"),
    (line(audio="missing.wav"), "line 2: field 'audio': no such file"),
    (line(session=""), "line 2: field 'session': expected a non-empty string"),
    (line(role="manager"), "line 2: field 'role': expected one of customer, staff, got 'manager'"),
    (line(ratings={}), "line 2: field 'ratings': expected an object"),
    (line(ratings={"ann1": {"pleasant": 8}}), "line 2: field 'ratings.ann1.pleasant': "
                                              "expected an integer 1..7, got 8"),
    (line(ratings={"ann1": {"pleasant": 4.5}}), "field 'ratings.ann1.pleasant'"),
    (line(ratings={"ann1": {"pleasant": True}}), "field 'ratings.ann1.pleasant'"),
    (line(role="staff"), "line 2: field 'ratings.ann1.purchase_intention': rated on a staff line"),
    (line(dialogue="d1", start=1.0), "line 2: field(s) end: 'dialogue', 'start' and 'end' "
                                     "come together"),
    (line(dialogue="d1", start=3.0, end=2.0), "line 2: field 'end': 2.0 is not after start 3.0"),
    (line(dialogue="d1", start=-1, end=2.0), "line 2: field 'start': expected a time"),
    (line(speakr="x"), "line 2: unknown field(s) 'speakr'"),
])
def test_each_bad_line_gets_one_clear_message(corpus_dir, bad, message):
    found = problems(write(corpus_dir, line(), bad, line()))
    assert len(found) == 1, found
    assert message in found[0]


def test_all_bad_lines_are_reported_together(corpus_dir):
    path = write(corpus_dir, line(role="boss"), line(), "", line(session=None), "{")
    found = problems(path)
    assert [p.split(":")[0] for p in found] == ["line 1", "line 4", "line 5"]
    assert str(path) in str(ManifestError(path, found))


def test_empty_and_unreadable_manifests(tmp_path):
    assert problems(write(tmp_path, "")) == ["no utterances"]
    assert "cannot read" in problems(tmp_path / "absent.jsonl")[0]
