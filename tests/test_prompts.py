from pathlib import Path

import pytest

from emoclap.prompts import PromptError, add_sentences, load_prompt_dir, parse_prompt_file, parse_prompt_paths

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
label = "Pleasant – unpleasant"
key_word = "pleasant"
roles = ["customer"]
temperature = 20.0
bias = -0.5

[negative]
label = "Unpleasant"
en = ["My emotions are uncomfortable.", "I feel uneasy."]
ja = ["私の気持ちは不快です。"]

[positive]
label = "Pleasant"
en = ["My emotions are pleasant."]
ja = ["私の気持ちは心地よいです。"]
"""


def test_full_file_parses():
    e = parse_prompt_file(GOOD, "pleasant", "p.toml")
    assert (e.name, e.label, e.key_word, e.roles, e.temperature, e.bias) == (
        "pleasant", "Pleasant – unpleasant", "pleasant", ("customer",), 20.0, -0.5)
    assert e.negative.label == "Unpleasant"
    assert e.negative.sentences["en"][0] == "My emotions are uncomfortable."
    assert e.negative.texts(["en"]) == ["My emotions are uncomfortable.", "I feel uneasy."]
    assert e.positive.texts() == ["My emotions are pleasant.", "私の気持ちは心地よいです。"]
    assert e.applies_to("customer") and not e.applies_to("staff")


def test_defaults():
    text = GOOD.replace('key_word = "pleasant"\n', "").replace('roles = ["customer"]\n', "")
    text = text.replace("temperature = 20.0\n", "").replace("bias = -0.5\n", "")
    e = parse_prompt_file(text, "calm", "c.toml")
    assert (e.key_word, e.roles, e.temperature, e.bias) == ("calm", None, None, 0.0)
    assert e.applies_to("staff")


def test_shipped_prompts_load():
    emotions = load_prompt_dir(REPO / "prompts")
    assert set(emotions) == {"pleasant", "aroused", "dominant", "credible", "interested",
                             "positive", "purchase_intention"}
    assert emotions["purchase_intention"].roles == ("customer",)
    assert emotions["purchase_intention"].positive.sentences["en"][0] == "I want to buy it."  # the canonical one
    assert all(e.label and e.negative.label and e.positive.label for e in emotions.values())


def test_key_word_per_language_and_its_fallback():
    def words(key_word, name="pleasant"):
        text = GOOD.replace('key_word = "pleasant"', key_word) if key_word else GOOD.replace('key_word = "pleasant"\n', "")
        return parse_prompt_file(text, name, "p.toml")

    e = words('key_word = {en = "pleasant", ja = " 心地よい "}')
    assert (e.key_word, e.key_word_for("en"), e.key_word_for("ja")) == ("pleasant", "pleasant", "心地よい")
    assert e.key_word_for("de") == "pleasant"  # no own entry: the `en` entry
    e = words('key_word = {ja = "心地よい"}')
    assert (e.key_word, e.key_word_for("ja"), e.key_word_for("en")) == ("pleasant", "心地よい", "pleasant")
    e = words('key_word = {ja = "心地よい"}', name="calm")  # no `en` entry: the emotion's name
    assert (e.key_word_for("en"), e.key_word_for("fr")) == ("calm", "calm")
    e = words('key_word = "nice"')  # a plain string: every language
    assert (e.key_word_for("ja"), e.key_words) == ("nice", {})
    assert words("", name="calm").key_word_for("ja") == "calm"
    table = GOOD.replace('key_word = "pleasant"\n', "").replace("[negative]", '[key_word]\nen = "nice"\nja = "快"\n\n[negative]')
    assert parse_prompt_file(table, "pleasant").key_words == {"en": "nice", "ja": "快"}


def test_bad_key_word_tables_point_at_their_line():
    def err(key_word):
        return bad(GOOD.replace('key_word = "pleasant"', key_word))

    assert err("key_word = {}").line == 2 and "empty table" in err("key_word = {}").message
    e = err('key_word = {en = "pleasant", jp = "快"}')
    assert e.line == 2 and "unknown language 'jp' in 'key_word'" in e.message
    for value in ('{ja = ""}', '{ja = "  "}', "{ja = 3}", '{ja = ["快"]}', "{ja = {en = \"x\"}}",
                  '{ja = "' + "快" * 201 + '"}'):
        e = err(f"key_word = {value}")
        assert e.line == 2 and "'key_word' for 'ja' must be a non-empty string of at most 200" in e.message
    for value in ("3", '["pleasant"]', "true"):
        assert "a table of ISO 639-1 language codes to words" in err(f"key_word = {value}").message
    table = GOOD.replace('key_word = "pleasant"\n', "").replace("[negative]", '[key_word]\nen = "nice"\nxx = "快"\n\n[negative]')
    e = bad(table)
    assert e.line == 8 and "unknown language 'xx'" in e.message


def test_shipped_prompts_prohibit_a_japanese_word_their_japanese_sentence_carries():
    for folder in (REPO / "prompts", REPO / "prompts" / "alternatives"):
        for name, e in load_prompt_dir(folder).items():
            word = e.key_word_for("ja")
            assert not word.isascii() and e.key_word_for("en") == e.key_word, name
            assert word in e.positive.sentences["ja"][0], name


def bad(text, name="pleasant"):
    with pytest.raises(PromptError) as info:
        parse_prompt_file(text, name, "dir/p.toml")
    return info.value


def test_syntax_error_has_line():
    err = bad(GOOD.replace('label = "Unpleasant"', 'label = "Unpleasant'))
    assert err.source == "dir/p.toml" and err.line == 8
    assert str(err).startswith("dir/p.toml:8: invalid TOML")


def test_missing_pole():
    err = bad(GOOD.split("[positive]")[0])
    assert "[positive] pole is missing" in str(err)


def test_empty_sentence_list_points_at_its_line():
    err = bad(GOOD.replace('en = ["My emotions are pleasant."]', "en = []"))
    assert err.line == 14 and "'en' in [positive] must be a non-empty list" in err.message
    err = bad(GOOD.replace('ja = ["私の気持ちは不快です。"]', 'ja = ["  "]'))
    assert err.line == 10


def test_pole_without_sentences():
    text = GOOD.replace('en = ["My emotions are pleasant."]\nja = ["私の気持ちは心地よいです。"]\n', "")
    err = bad(text)
    assert err.line == 12 and "[positive] has no sentences" in err.message


def test_unknown_language_points_at_its_line():
    err = bad(GOOD.replace("ja = [\"私の気持ちは心地よいです。\"]", "jp = [\"x\"]"))
    assert err.line == 15 and "unknown language 'jp'" in err.message


def test_languages_outside_the_model_are_ignored_unless_nothing_is_left():
    e = parse_prompt_file(GOOD, "pleasant", "p.toml", languages=["ja"])
    assert e.positive.texts(["ja"]) == ["私の気持ちは心地よいです。"]
    text = GOOD.replace('ja = ["私の気持ちは心地よいです。"]\n', "")
    err = bad_with_languages(text, ["ja"])
    assert err.line == 12 and "no sentences in the model's languages (ja)" in err.message


def bad_with_languages(text, languages):
    with pytest.raises(PromptError) as info:
        parse_prompt_file(text, "pleasant", "p.toml", languages=languages)
    return info.value


def test_unknown_keys_point_at_their_line():
    err = bad(GOOD.replace("bias = -0.5", "bais = -0.5"))
    assert err.line == 5 and "unknown key 'bais'" in err.message
    err = bad(GOOD + "\n[neutral]\nen = [\"x\"]\n")
    assert err.line == 17 and "unknown key 'neutral'" in err.message


def test_wrong_types_point_at_their_line():
    assert bad(GOOD.replace("temperature = 20.0", 'temperature = "hot"')).line == 4
    assert bad(GOOD.replace("temperature = 20.0", "temperature = 0")).line == 4
    assert bad(GOOD.replace('roles = ["customer"]', "roles = []")).line == 3
    assert bad(GOOD.replace('label = "Pleasant – unpleasant"', 'label = ""')).line == 1
    err = bad(GOOD.replace('label = "Unpleasant"\n', ""))
    assert err.line == 7 and "'label' is missing in [negative]" in err.message


def test_duplicate_key_and_bad_name():
    err = bad(GOOD.replace("bias = -0.5", "bias = -0.5\nbias = 1.0"))
    assert err.line == 6 and "invalid TOML" in err.message
    assert "emotion name" in bad(GOOD, name="Not Valid").message


def test_directory_reports_duplicates_and_every_bad_file(tmp_path):
    (tmp_path / "purchase-intention.toml").write_text(GOOD)
    (tmp_path / "purchase_intention.toml").write_text(GOOD)
    (tmp_path / "broken.toml").write_text("label = ")
    (tmp_path / "notes.txt").write_text("not a prompt")
    emotions, errors = parse_prompt_paths(sorted(tmp_path.glob("*.toml")))
    assert list(emotions) == ["purchase_intention"]
    assert set(errors) == {str(tmp_path / "broken.toml"), str(tmp_path / "purchase_intention.toml")}
    assert "duplicate emotion name 'purchase_intention'" in str(errors[str(tmp_path / "purchase_intention.toml")])
    with pytest.raises(PromptError, match="broken.toml:1: invalid TOML.*duplicate"):
        load_prompt_dir(tmp_path)


COMMENTED = GOOD.replace('en = ["My emotions are uncomfortable.", "I feel uneasy."]',
                         'en = ["My emotions are uncomfortable.",  # canonical\n      "I feel uneasy."]  # [sic]')


def test_add_sentences_appends_after_what_is_there_and_keeps_comments():
    new = add_sentences(COMMENTED, "negative", "en", ["I am ill at ease.", ' He said "no" [twice] '])
    e = parse_prompt_file(new, "pleasant")
    assert e.negative.sentences["en"] == ["My emotions are uncomfortable.", "I feel uneasy.",
                                          "I am ill at ease.", 'He said "no" [twice]']
    assert e.negative.sentences["ja"] == ["私の気持ちは不快です。"] and e.positive == parse_prompt_file(GOOD, "x").positive
    head, tail = COMMENTED.split("[negative]")
    assert new.startswith(head + "[negative]") and new.endswith(tail[tail.index("ja = "):])
    assert add_sentences(GOOD, "negative", "en", []) == GOOD


def test_add_sentences_adds_a_new_language_at_the_end_of_its_pole():
    new = add_sentences(GOOD, "positive", "de", ["Mir geht es gut.", "Alles ist schön."])
    e = parse_prompt_file(new, "pleasant")
    assert e.positive.sentences["de"] == ["Mir geht es gut.", "Alles ist schön."]
    assert e.positive.sentences["en"] == ["My emotions are pleasant."]
    assert new.startswith(GOOD.rstrip("\n")) and new.endswith("]\n")
    with pytest.raises(PromptError, match="unknown language 'xx'"):
        add_sentences(GOOD, "positive", "xx", ["?"], "dir/p.toml")
    with pytest.raises(PromptError, match="invalid TOML"):
        add_sentences("label = ", "positive", "en", ["?"])
