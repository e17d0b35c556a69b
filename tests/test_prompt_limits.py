"""Hostile prompt files: refused with file and line, never a crash, never half-applied;
limits on size and count; a stop during a long embed ends promptly."""
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.prompt_bank import PromptBank
from emoclap.prompts import (ISO_639_1, MAX_FILE_BYTES, MAX_LABEL_CHARS, MAX_SENTENCES, PromptError,
                             load_prompt_dir, parse_prompt_file)

GOOD = """label = "Calm – agitated"
[negative]
label = "Agitated"
en = ["I am agitated."]
[positive]
label = "Calm"
en = ["I am calm."]
"""


def refused(text: str, match: str):
    with pytest.raises(PromptError, match=match):
        parse_prompt_file(text, "calm", "calm.toml")


def test_values_a_typo_or_a_nan_would_poison_are_refused():
    refused(GOOD.replace('label = "Calm – agitated"', 'label = "x"\nbias = nan'), "bias.*finite")
    refused(GOOD.replace('label = "Calm – agitated"', 'label = "x"\ntemperature = inf'), "temperature")
    refused(GOOD.replace('label = "Calm – agitated"', 'label = "x"\ntemperature = 0'), "temperature")
    refused(GOOD.replace('label = "Calm – agitated"', 'label = "x"\nroles = ["custmer"]'), "roles")
    refused(GOOD.replace('label = "Calm – agitated"', 'label = "x"\nbias = 1e300'), "bias")
    refused(GOOD.replace('["I am calm."]', '["' + "a" * 600 + '"]'), "longer than")
    refused("x = " + "[" * 2000 + "]" * 2000, "nested too deeply|invalid TOML")
    many = ", ".join(f'"sentence {i}"' for i in range(MAX_SENTENCES + 1))
    refused(GOOD.replace('["I am calm."]', f"[{many}]"), f"more than {MAX_SENTENCES}")
    with pytest.raises(PromptError, match="larger than"):
        parse_prompt_file(GOOD + "#" * MAX_FILE_BYTES, "calm", "calm.toml")
    ok = parse_prompt_file(GOOD.replace('label = "Calm – agitated"',
                                        'label = "x"\nroles = ["customer", "customer"]'), "calm")
    assert ok.roles == ("customer",)


toml_scalars = st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans())
pole = st.fixed_dictionaries({}, optional={"label": toml_scalars, "en": st.lists(toml_scalars, max_size=3),
                                           "xx": st.lists(st.text(max_size=5), max_size=2)})


def to_toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan" if value != value else repr(value))
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    return str(value)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={"label": toml_scalars, "key_word": toml_scalars,
                                           "roles": st.lists(toml_scalars, max_size=3),
                                           "temperature": toml_scalars, "bias": toml_scalars}),
       st.lists(st.tuples(st.sampled_from(["negative", "positive", "other"]), pole), max_size=3),
       st.text(max_size=200))
def test_any_file_parses_or_is_refused_with_its_name(top, tables, noise):
    text = "".join(f"{k} = {to_toml(v)}\n" for k, v in top.items())
    for name, table in tables:
        text += f"[{name}]\n" + "".join(f"{k} = {to_toml(v)}\n" for k, v in table.items())
    for candidate in (text, noise, text + noise):
        try:
            emotion = parse_prompt_file(candidate, "mood", "mood.toml")
        except PromptError as exc:
            assert str(exc).startswith("mood.toml")
            continue
        assert emotion.negative.texts() and emotion.positive.texts()
        assert emotion.temperature is None or 0 < emotion.temperature <= 1000
        assert -100 <= emotion.bias <= 100


language_codes = st.one_of(st.sampled_from(["en", "ja", "de", "jp", "eng", "EN", "", "label", "en.ja"]),
                           st.text(max_size=4))
key_word_values = st.one_of(st.sampled_from(["pleasant", " 心地よい ", "買", "", "  ", "快" * (MAX_LABEL_CHARS + 1)]),
                            st.text(max_size=MAX_LABEL_CHARS + 20), st.integers(), st.floats(), st.booleans(),
                            st.lists(st.text(max_size=5), max_size=2),
                            st.dictionaries(st.sampled_from(["en", "x"]), st.text(max_size=5), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.dictionaries(language_codes, key_word_values, max_size=4), key_word_values),
       st.sampled_from(["inline", "table"]))
def test_any_key_word_is_a_word_per_language_or_is_refused_with_its_line(key_word, form):
    def toml(value) -> str:  # every string valid TOML, so the parser's own checks are what is tested
        if isinstance(value, str):
            return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\U{ord(c):08x}"
                                 for c in value) + '"'
        if isinstance(value, list):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{toml(k)} = {toml(v)}" for k, v in value.items()) + "}"
        return to_toml(value)

    if form == "table" and isinstance(key_word, dict):
        text = GOOD.replace("[negative]", "[key_word]\n" + "".join(
            f"{toml(k)} = {toml(v)}\n" for k, v in key_word.items()) + "[negative]")
    else:
        text = GOOD.replace('label = "Calm – agitated"\n', f'label = "Calm – agitated"\nkey_word = {toml(key_word)}\n')
    try:
        emotion = parse_prompt_file(text, "calm", "calm.toml")
    except PromptError as exc:
        assert str(exc).startswith("calm.toml:") and exc.line is not None
        assert "key_word" in exc.message or "invalid TOML" in exc.message
        return
    for language in ("en", "ja", "de"):
        word = emotion.key_word_for(language)
        assert isinstance(word, str) and word == word.strip() and 0 < len(word) <= MAX_LABEL_CHARS
    assert set(emotion.key_words) <= ISO_639_1
    if isinstance(key_word, dict):
        assert emotion.key_words == {k: v.strip() for k, v in key_word.items()}
        assert emotion.key_word == emotion.key_words.get("en", "calm")
    else:
        assert emotion.key_words == {} and emotion.key_word == key_word.strip()


def test_oversized_file_is_refused_before_it_is_read(tmp_path):
    (tmp_path / "big.toml").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    with pytest.raises(PromptError, match="big.toml: file is larger than"):
        load_prompt_dir(tmp_path)


class SlowEncoder:
    """The real text encoder, made slow, to catch a stop in the middle of an embed."""

    def __init__(self, encoder, seconds: float):
        self.encoder, self.bundle, self.seconds, self.calls = encoder, encoder.bundle, seconds, 0

    def embed(self, texts):
        self.calls += 1
        time.sleep(self.seconds)
        return self.encoder.embed(texts)


@pytest.fixture
def text_encoder(tiny_bundle):
    from daemon.encoder import TextEncoder
    from emoclap.bundle import load_bundle

    return TextEncoder(load_bundle(tiny_bundle), provider="cpu", intra_op_threads=1)


def test_a_deeply_nested_file_does_not_stop_a_good_one_in_the_same_poll(tmp_path, text_encoder):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "calm.toml").write_text(GOOD)
    bank = PromptBank(folder, text_encoder)
    (folder / "bomb.toml").write_text("x = " + "[" * 5000 + "]" * 5000)
    (folder / "happy.toml").write_text(GOOD.replace("calm", "happy"))
    bank.reload()
    assert set(bank.emotions) == {"calm", "happy"}
    assert "bomb.toml" in bank.errors[str(folder / "bomb.toml")]


def test_stop_during_a_long_embed_returns_promptly_and_applies_nothing(tmp_path, text_encoder):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "calm.toml").write_text(GOOD)
    slow = SlowEncoder(text_encoder, 0.2)
    bank = PromptBank(folder, slow)
    many = ", ".join(f'"I am calm, reason {i}."' for i in range(600))
    (folder / "big.toml").write_text(GOOD.replace('["I am calm."]', f"[{many}]").replace("Calm", "Big"))
    worker = threading.Thread(target=bank.reload)
    worker.start()
    while slow.calls < 2:
        time.sleep(0.05)
    started = time.monotonic()
    bank.stop()
    worker.join(5)
    assert not worker.is_alive() and time.monotonic() - started < 1.0
    assert set(bank.emotions) == {"calm"} and bank.errors == {}
    # Not marked as read: the next start embeds it (from where the cache left off).
    bank._stop.clear()
    bank.reload()
    assert set(bank.emotions) == {"big", "calm"}
    bank.close()
    assert Path(folder / "big.toml").exists()


def test_a_missing_folder_is_logged_once_and_its_return_once(tmp_path, text_encoder, caplog):
    import logging
    import shutil

    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "calm.toml").write_text(GOOD)
    bank = PromptBank(folder, text_encoder)
    shutil.rmtree(folder)
    with caplog.at_level(logging.INFO, logger="emoclapd.prompts"):
        for _ in range(5):
            assert bank.reload() is None
        folder.mkdir()
        (folder / "calm.toml").write_text(GOOD)
        bank.reload()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("prompt folder is missing" in line for line in lines) == 1
    assert sum("prompt folder is back" in line for line in lines) == 1
    assert set(bank.emotions) == {"calm"}
