"""Customer words and delivery are drawn apart and mixed only in the ratings: neither
gives the other away, and every template of every act speaks in every language."""
import re
import string

import numpy as np
import pytest

from trainer.synth.affect import PURCHASE
from trainer.synth.script import SCENARIOS, speakers, write_dialogue
from trainer.synth.wording import ACTS, CLOSING, LABELS, WORDING_SHARE, customer_words, rated

PI = LABELS.index(PURCHASE)


def customer_turns(language="en", dialogues=60):
    pool = speakers(language)
    turns = []
    for d in range(dialogues):
        rng = np.random.default_rng([7, d])
        script = write_dialogue(rng, SCENARIOS[d % len(SCENARIOS)], pool[0], pool[1], 20, language)
        turns += [t for t in script if t.role == "customer"]
    return turns


def test_wording_is_independent_of_delivery_and_the_rating_follows_both():
    turns = customer_turns()
    heard = np.array([t.affect.purchase for t in turns])
    voice = np.array([t.delivery.purchase for t in turns])
    words = (heard - (1 - WORDING_SHARE[PURCHASE]) * voice) / WORDING_SHARE[PURCHASE]  # exact unless clipped
    assert abs(np.corrcoef(words, voice)[0, 1]) < 0.1
    assert np.corrcoef(heard, words)[0, 1] > 0.7
    assert np.corrcoef(heard, voice)[0, 1] > 0.2
    # An eager refusal and a flat purchase both occur.
    assert ((words < -0.5) & (voice > 0.3)).sum() >= 10 and ((words > 0.5) & (voice < -0.3)).sum() >= 10


def test_the_voice_follows_delivery_not_the_words():
    # Staff have no separate wording: what a listener hears is the voice alone.
    pool = speakers("en")
    script = write_dialogue(np.random.default_rng(3), SCENARIOS[0], pool[2], pool[3], 20, "en")
    for t in script:
        if t.role == "staff":
            assert t.affect is t.delivery
        else:
            assert t.affect is not t.delivery


@pytest.mark.parametrize("language", ["en", "ja"])
def test_every_template_fills_its_slots(language):
    slots = {"item": "X", "feature": "Y", "price": "Z"}
    for act in ACTS:
        assert len(act.lines[language]) >= 4, act.name
        for line in act.lines[language]:
            names = {f for _, f, _, _ in string.Formatter().parse(line) if f}
            assert names <= set(slots), (act.name, line)
            filled = line.format(**slots)
            assert not re.search(r"[{}]", filled)
            assert filled.strip() == filled and filled[-1] in ".?!。？！,", (act.name, line)


def test_purchase_acts_have_many_wordings_and_a_closing_line_says_where_the_sale_stands():
    by_name = {a.name: a for a in ACTS}
    buyer = len(by_name["buy"].lines["en"]) + len(by_name["buy_detail"].lines["en"])
    refusing = len(by_name["refuse"].lines["en"]) + len(by_name["hesitate"].lines["en"])
    assert buyer >= 40 and refusing >= 25
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, lean = customer_words(rng, "en", {"item": "car", "feature": "seat", "price": "ten"}, closing=True)
        assert lean[PI] != 0
    assert set(CLOSING) <= set(by_name)


def test_acts_never_contradict_each_other_in_one_line():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        _, lean = customer_words(rng, "en", {"item": "a", "feature": "b", "price": "c"})
        assert np.all(np.abs(lean) <= 1.0)
    sale = next(a for a in ACTS if a.name == "buy").vector()
    no = next(a for a in ACTS if a.name == "refuse").vector()
    assert (sale * no < 0).any()  # the pair the draw must never put together


def test_rated_mixes_per_label_and_stays_in_range():
    lean = np.ones(len(LABELS))
    voice = -np.ones(len(LABELS))
    mixed = rated(lean, voice)
    assert mixed[PI] > 0 > mixed[LABELS.index("aroused")]  # words lead a sale, the voice leads arousal
    assert np.all(np.abs(rated(lean * 5, voice * 5)) <= 1.0)


def test_english_voices_leave_the_benchmark_accents_and_variants_out():
    voices = {(s.accent, s.voice) for s in speakers("en")}
    assert len(voices) == len(speakers("en")) >= 20
    assert {a for a, _ in voices} == {"en-us", "en"}
