import queue
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from emoclap.bundle import load_bundle
from daemon.encoder import TextEncoder
from daemon.prompt_bank import PromptBank, PromptBankOptions
from emoclap.zeroshot import score_utterance

REPO = Path(__file__).resolve().parent.parent
CALM = """\
label = "Calm – agitated"
temperature = 7.5

[negative]
label = "Agitated"
en = ["I am agitated.", "I am upset."]

[positive]
label = "Calm"
en = ["I am calm."]
ja = ["落ち着いています。"]
"""


@pytest.fixture(scope="module")
def text_encoder(tiny_bundle):
    return TextEncoder(load_bundle(tiny_bundle), provider="cpu", intra_op_threads=1)


@pytest.fixture
def folder(tmp_path):
    return Path(shutil.copytree(REPO / "prompts", tmp_path / "prompts",
                                ignore=shutil.ignore_patterns("alternatives")))


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_pole_vectors_average_normalised_sentences(folder, text_encoder, tmp_path):
    (folder / "calm.toml").write_text(CALM)
    bank = PromptBank(folder, text_encoder, PromptBankOptions(cache=str(tmp_path / "c.sqlite")))
    v = bank.vectors
    assert v.names == ("aroused", "calm", "credible", "dominant", "interested", "pleasant",
                       "positive", "purchase_intention")
    k = v.names.index("calm")
    neg = unit(unit(text_encoder.embed(["I am agitated.", "I am upset."])).mean(0))
    pos = unit(unit(text_encoder.embed(["I am calm.", "落ち着いています。"])).mean(0))
    np.testing.assert_allclose(v.negative[k], neg, atol=1e-5)
    np.testing.assert_allclose(v.positive[k], pos, atol=1e-5)
    assert v.scale[k] == pytest.approx(7.5)
    assert v.scale[v.names.index("pleasant")] == pytest.approx(20.0)  # the bundle's
    assert v.roles[v.names.index("purchase_intention")] == ("customer",)
    scores = score_utterance(unit(np.ones(v.negative.shape[1], np.float32)), bank, "staff")
    assert "purchase_intention" not in scores and set(scores) == set(v.names) - {"purchase_intention"}
    assert bank.errors == {}


def test_restart_embeds_nothing_unchanged(folder, text_encoder, tmp_path):
    cache = str(tmp_path / "cache" / "text.sqlite")
    start = text_encoder.texts_embedded
    first = PromptBank(folder, text_encoder, PromptBankOptions(cache=cache))
    sentences = sum(len(e.negative.texts()) + len(e.positive.texts()) for e in first.emotions.values())
    assert text_encoder.texts_embedded - start == sentences
    first.close()
    start = text_encoder.texts_embedded
    second = PromptBank(folder, text_encoder, PromptBankOptions(cache=cache))
    assert text_encoder.texts_embedded == start
    np.testing.assert_array_equal(second.vectors.positive, first.vectors.positive)
    # One new paraphrase: one sentence embedded, the rest from the cache.
    path = folder / "positive.toml"
    path.write_text(path.read_text().replace('en = ["I am positive."]', 'en = ["I am positive.", "I feel good."]'))
    second.reload()
    assert text_encoder.texts_embedded == start + 1
    second.close()


def test_languages_outside_the_bundle_are_refused_when_nothing_is_left(folder, text_encoder):
    (folder / "french.toml").write_text(CALM.replace("en = ", "fr = ").replace("ja = ", "de = "))
    bank = PromptBank(folder, text_encoder)
    assert "french" not in bank.vectors.names
    (message,) = bank.errors.values()
    assert "french.toml:4: [negative] has no sentences in the model's languages (en, ja); it has fr" in message


def wait_for(updates, predicate, timeout=2.0):
    """The first update that satisfies `predicate`, with the seconds it took."""
    start = time.monotonic()
    while True:
        left = timeout - (time.monotonic() - start)
        try:
            update = updates.get(timeout=max(left, 0.001))
        except queue.Empty:
            raise AssertionError(f"no matching prompt update within {timeout} s") from None
        if predicate(update):
            return update, time.monotonic() - start


def test_hot_reload_add_edit_break_fix_delete(folder, text_encoder):
    bank = PromptBank(folder, text_encoder, PromptBankOptions(poll_s=0.1)).start()
    updates: queue.Queue = queue.Queue()
    bank.subscribe(updates.put)
    latencies = {}
    try:
        (folder / "calm.toml").write_text(CALM)
        update, latencies["add"] = wait_for(updates, lambda u: "calm" in u.added)
        assert "calm" in bank.vectors.names and update.vectors is bank.vectors
        before = bank.vectors.positive[bank.vectors.names.index("calm")].copy()

        (folder / "calm.toml").write_text(CALM.replace('"I am calm."', '"I am relaxed."'))
        update, latencies["edit"] = wait_for(updates, lambda u: "calm" in u.changed)
        after = bank.vectors.positive[bank.vectors.names.index("calm")]
        assert np.abs(after - before).max() > 1e-6
        assert update.emotions["calm"].positive.sentences["en"] == ["I am relaxed."]

        (folder / "calm.toml").write_text(CALM.replace("[positive]", "[positive"))
        update, latencies["break"] = wait_for(updates, lambda u: u.errors)
        assert str(folder / "calm.toml") + ":8: invalid TOML" in update.errors[str(folder / "calm.toml")]
        assert "calm" in bank.vectors.names  # the last good version stays in use
        np.testing.assert_array_equal(bank.vectors.positive[bank.vectors.names.index("calm")], after)

        (folder / "calm.toml").write_text(CALM)
        update, latencies["fix"] = wait_for(updates, lambda u: not u.errors and "calm" in u.changed)
        assert bank.errors == {}

        (folder / "calm.toml").unlink()
        update, latencies["delete"] = wait_for(updates, lambda u: "calm" in u.removed)
        assert "calm" not in bank.vectors.names and len(bank.vectors.names) == 7
    finally:
        bank.close()
    print("\nprompt reload latency (write to update, poll 0.1 s): " +
          ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in latencies.items()) +
          f"; reload itself {bank.last_latency_s * 1000:.1f} ms")


def test_broken_new_file_and_duplicate_names_are_reported(folder, text_encoder):
    bank = PromptBank(folder, text_encoder)
    calls = []
    bank.subscribe(calls.append)
    (folder / "purchase-intention.toml").write_text(CALM)
    (folder / "empty.toml").write_text('label = "x"\n[negative]\nlabel = "n"\nen = []\n')
    update = bank.reload()
    assert update is not None and update.added == ()
    errors = bank.errors
    assert "duplicate emotion name 'purchase_intention'" in errors[str(folder / "purchase-intention.toml")]
    assert "empty.toml:4: 'en' in [negative] must be a non-empty list" in errors[str(folder / "empty.toml")]
    assert bank.reload() is None  # nothing changed since: not re-read, not re-announced
    (folder / "purchase_intention.toml").unlink()
    update = bank.reload()
    # With the original gone, the other spelling takes the name.
    assert update.removed == ("purchase_intention",) and update.added == ("purchase_intention",)
    assert bank.emotions["purchase_intention"].label == "Calm – agitated"
    # Subscribers heard of each file as it was applied, the last with the state now.
    assert calls[-1].emotions["purchase_intention"].label == "Calm – agitated"
    assert calls[-1].errors == {str(folder / "empty.toml"): errors[str(folder / "empty.toml")]}


def test_a_failing_subscriber_does_not_stop_reloads(folder, text_encoder):
    bank = PromptBank(folder, text_encoder)
    seen = []
    bank.subscribe(lambda u: 1 / 0)
    bank.subscribe(seen.append)
    (folder / "calm.toml").write_text(CALM)
    assert bank.reload().added == ("calm",)
    assert len(seen) == 1


def test_unchanged_save_is_quiet_and_a_vanished_folder_keeps_the_bank(folder, text_encoder, tmp_path):
    bank = PromptBank(folder, text_encoder)
    path = folder / "pleasant.toml"
    path.write_text(path.read_text())  # saved again, same content: new stamp
    assert bank.reload() is None
    moved = tmp_path / "elsewhere"
    folder.rename(moved)
    assert bank.reload() is None and len(bank.vectors.names) == 7
    moved.rename(folder)
    (folder / "aroused.toml").unlink()
    assert bank.reload().removed == ("aroused",)


def test_every_bad_file_is_logged_by_name_through_the_logs_repeat_filter(tmp_path, text_encoder):
    """The daemon's log lets one line per message a minute through: distinct files' errors
    are distinct messages, so none is swallowed by another's."""
    import logging

    from daemon.notify import RepeatFilter

    prompts = tmp_path / "p"
    prompts.mkdir()
    (prompts / "broken.toml").write_text('label = "x"\n[negative\n')
    (prompts / "garbage.toml").write_bytes(bytes(range(256)))
    (prompts / "onepole.toml").write_text('label = "C"\n[negative]\nlabel = "n"\nen = ["a"]\n')
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())
    handler = Keep()
    handler.addFilter(RepeatFilter())
    logger = logging.getLogger("emoclapd.prompts")
    logger.addHandler(handler)
    try:
        bank = PromptBank(prompts, text_encoder, PromptBankOptions())
        (prompts / "later.toml").write_text("not toml at all [")
        time.sleep(0.05)
        bank.reload()
    finally:
        logger.removeHandler(handler)
    for name in ("broken.toml", "garbage.toml", "onepole.toml", "later.toml"):
        assert any(name in line for line in seen), (name, seen)
    assert len(bank.errors) == 4


def test_subscribers_hear_of_each_file_as_it_is_applied_and_nothing_piles_up(folder, text_encoder, tmp_path):
    """A pass over many new files notifies as it goes: the first file is in use (and
    announced) before the last is read, and no update outlives its notification (each
    holds a snapshot of every pole vector: hundreds kept to the end cost hundreds of MB)."""
    import gc
    import weakref

    bank = PromptBank(folder, text_encoder, PromptBankOptions(cache=str(tmp_path / "c.sqlite")))
    order, kept = [], []
    bank.subscribe(lambda u: (order.append(("notified", u.added)), kept.append(weakref.ref(u))))
    prepare = bank._prepare
    bank._prepare = lambda path, number: (order.append(("read", Path(path).stem)), prepare(path, number))[1]
    for i in range(30):
        (folder / f"bulk_{i:02d}.toml").write_text(CALM.replace("Calm", f"Calm {i}"))
    summary = bank.reload()
    gc.collect()
    assert order.index(("notified", ("bulk_00",))) < order.index(("read", "bulk_29"))
    assert summary.added == tuple(f"bulk_{i:02d}" for i in range(30))
    assert sum(ref() is not None for ref in kept) <= 1  # the summary's own, at most
