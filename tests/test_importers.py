import json
import shutil

import pytest
import soundfile as sf

from tests import corpus_layouts as layouts
from trainer.importers import import_corpus
from trainer.importers.mapping import category, rescale
from trainer.importers.writer import CorpusError
from trainer.labels import binary_labels, rated_emotions
from trainer.manifest import load_manifest


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng missing: run ./bootstrap test, which installs it")
    return layouts.Voices(tmp_path_factory.mktemp("voices"))


def build(kind, tmp_path, voices):
    maker = {"msp-podcast": layouts.msp_podcast, "iemocap": layouts.iemocap, "crema-d": layouts.crema_d,
             "ravdess": layouts.ravdess, "jvnv": layouts.jvnv, "csv": layouts.generic}[kind]
    src = tmp_path / "src"
    src.mkdir()
    return maker(src, voices)


def imported(kind, tmp_path, voices):
    report = import_corpus(kind, build(kind, tmp_path, voices), tmp_path / "out")
    utts = load_manifest(tmp_path / "out" / "manifest.jsonl")
    labels = binary_labels(utts)
    assert set(labels) == set(rated_emotions(utts)) and len(utts) == report.clips
    for u in utts:
        assert u.role in ("customer", "staff")
        info = sf.info(str(u.audio))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    return report, utts


def by_name(utts, part):
    (u,) = [u for u in utts if part in u.audio.name]
    return u


def test_mapping_table():
    assert [rescale(v, 1, 5) for v in (1, 2, 3, 4, 5)] == [1, 2, 4, 6, 7]
    assert [rescale(v, 1, 7) for v in range(1, 8)] == list(range(1, 8))
    assert category("happy", 1.0) == {"pleasant": 7, "positive": 7, "aroused": 7, "dominant": 7}
    assert category("fearful", 2 / 3) == {"pleasant": 2, "positive": 2, "aroused": 6, "dominant": 2}
    assert category("neutral", 0.9) == {"pleasant": 4, "positive": 4, "aroused": 4, "dominant": 4}
    assert category("surprised", 1.0) == {"aroused": 7}
    for bad in (lambda: rescale(6, 1, 5), lambda: category("bored", 1), lambda: category("sad", 2)):
        with pytest.raises(ValueError):
            bad()


def test_iemocap(tmp_path, voices):
    report, utts = imported("iemocap", tmp_path, voices)
    assert report.sessions == 2 and report.speakers == 4 and len(utts) == 8
    u = by_name(utts, "Ses01F_impro01_F000")
    assert (u.session, u.speaker, u.role) == ("Session1", "Ses01F", "customer")
    # A-E1 "val 2; act 2; dom 3" on 1..5 -> 2, 2, 4; the actor's own A-F1 skipped activation
    assert u.ratings["E1"] == {"pleasant": 2, "positive": 2, "aroused": 2, "dominant": 4}
    assert u.ratings["F1"] == {"pleasant": 2, "positive": 2, "dominant": 2}
    assert u.transcript == layouts.TEXTS[1]
    assert not (tmp_path / "out" / "splits.json").exists()


def test_msp_podcast(tmp_path, voices):
    report, utts = imported("msp-podcast", tmp_path, voices)
    u = by_name(utts, "MSP-PODCAST_0001_0000")
    assert u.ratings["WORKER00000"] == {"aroused": 1, "pleasant": 1, "positive": 1, "dominant": 1}
    assert (u.session, u.speaker, u.transcript) == ("spk100", "spk100", layouts.TEXTS[0])
    assert by_name(utts, "_0007").speaker == "unknown-MSP-PODCAST_0002_0007"
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    assert splits["audio/Audios/MSP-PODCAST_0001_0000.wav"] == "Train"
    assert sorted(set(splits.values())) == ["Development", "Train"]


def test_crema_d(tmp_path, voices):
    report, utts = imported("crema-d", tmp_path, voices)
    assert len(utts) == 6 and report.speakers == 3
    assert report.left_out == {"rating rows of face or audio-visual presentation (not used)": 6}
    u = by_name(utts, "1001_IEO_ANG_HI")
    assert set(u.ratings) == {"raterr0", "raterr1"} and u.transcript == "It's eleven o'clock."
    # rater r0 heard anger (A) at level 55 -> 4 -/+ round(3 * 0.55) = 2
    assert u.ratings["raterr0"] == {"pleasant": 2, "positive": 2, "aroused": 6, "dominant": 6}


def test_ravdess_and_jvnv(tmp_path, voices):
    (tmp_path / "r").mkdir()
    report, utts = imported("ravdess", tmp_path / "r", voices)
    assert len(utts) == 10 and report.left_out == {"sung (vocal channel 02)": 1}
    strong_happy = by_name(utts, "03-01-03-02-01-01-02")
    assert strong_happy.ratings == {"acted": {"pleasant": 7, "positive": 7, "aroused": 7, "dominant": 7}}
    assert strong_happy.session == strong_happy.speaker == "actor02"
    assert by_name(utts, "03-01-02-01-01-01-01").ratings["acted"] == {"pleasant": 6, "positive": 6,
                                                                     "aroused": 2}
    (tmp_path / "j").mkdir()
    report, utts = imported("jvnv", tmp_path / "j", voices)
    assert report.sessions == 2 and by_name(utts, "F1_sad_regular").ratings["acted"]["aroused"] == 2


def test_generic_csv(tmp_path, voices):
    report, utts = imported("csv", tmp_path, voices)
    staff = by_name(utts, "c2.wav")
    assert staff.role == "staff" and "purchase_intention" not in staff.emotions
    assert by_name(utts, "c0.wav").ratings == {"ann1": {"pleasant": 1, "aroused": 7, "purchase_intention": 5},
                                               "ann2": {"pleasant": 2, "purchase_intention": 5}}


def failure(kind, tmp_path, voices, spoil):
    src = build(kind, tmp_path, voices)
    spoil(src)
    with pytest.raises(CorpusError) as caught:
        import_corpus(kind, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary folder left behind
    return "\n".join(caught.value.problems)


def test_missing_and_unreadable_clips_name_file_and_row(tmp_path, voices):
    def spoil(src):
        (src / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_M001.wav").unlink()
    message = failure("iemocap", tmp_path, voices, spoil)
    assert "Ses01F_impro01.txt:" in message and "no such audio file" in message \
        and "Ses01F_impro01_M001.wav" in message

    def garbage(src):
        (src / "AudioWAV/1002_DFA_SAD_LO.wav").write_bytes(b"RIFF not really a wave")
    shutil.rmtree(tmp_path / "src")
    message = failure("crema-d", tmp_path, voices, garbage)
    assert "finishedResponses.csv:" in message and "1002_DFA_SAD_LO.wav: cannot read audio" in message


def test_out_of_range_rating_and_speaker_in_two_sessions(tmp_path, voices):
    def loud(src):
        f = src / "Labels/labels_detailed.csv"
        f.write_text(f.read_text().replace("A:1.000000", "A:9.000000", 1))
    message = failure("msp-podcast", tmp_path, voices, loud)
    assert "labels_detailed.csv:2: annotator WORKER00000: rating 9 is outside 1..7" in message

    shutil.rmtree(tmp_path / "src")

    def moved(src):
        f = src
        f.write_text(f.read_text().replace("c3.wav,day2,", "c3.wav,day1,"))
    message = failure("csv", tmp_path, voices, moved)
    assert "ratings.csv:" in message and "ratings.csv:10: speaker 'day2-customer0' is in session 'day2' here but in 'day1'" in message


def test_existing_output_is_not_touched(tmp_path, voices):
    src = build("jvnv", tmp_path, voices)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(CorpusError, match="exists"):
        import_corpus("jvnv", src, tmp_path / "out")
    assert (tmp_path / "out" / "keep").read_text() == "x"


@pytest.mark.slow
def test_imported_corpus_trains_one_epoch(tmp_path, voices, capsys):
    from trainer.cli import main

    src = build("iemocap", tmp_path, voices)
    assert main(["import", "iemocap", str(src), "--out", str(tmp_path / "corpus")]) == 0
    assert "8 utterances, 2 sessions, 4 speakers" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["fit", str(tmp_path / "corpus" / "manifest.jsonl"), "--config", "configs/tiny.toml",
                 "--out", str(run), "--fold", "Session1", "--set", "train.epochs=1",
                 "--set", "train.batch_size=4", "--set", "train.max_seconds=1.0",
                 "--set", 'train.emotions=["pleasant","aroused"]']) == 0
    assert (run / "fold-Session1" / "best.pt").is_file()
    assert main(["import", "iemocap", str(src), "--out", str(tmp_path / "corpus")]) == 2
    assert "exists" in capsys.readouterr().err
