import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emoclap.prompts import parse_prompt_file
from trainer.cli import main
from trainer.paraphrase import (DEMONSTRATIONS, ParaphraseError, ParaphraseOptions, Paraphraser, augment_file,
                                contains_word, messages_for, normalise, parse_answer)
from trainer.paraphrase_gate import script_problem

PROMPT = '''# Bipolar emotion "pleasant".
label = "Pleasant – unpleasant"
key_word = {en = "pleasant", ja = "心地よい"}

[negative]
label = "Unpleasant"
en = ["My emotions are uncomfortable."]  # canonical
ja = ["私の気持ちは不快です。"]

[positive]
label = "Pleasant"
en = ["My emotions are pleasant."]
ja = ["私の気持ちは心地よいです。"]
'''


def completion(content):
    return 200, {}, {"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class Server:
    """A chat-completions endpoint answering from a script, recording every request."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, self.headers.get("Authorization"), body))
                status, headers, payload = outer.script.pop(0) if outer.script else (
                    500, {}, {"error": {"message": "script exhausted"}})
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def opts(tmp_path):
    return ParaphraseOptions(model="test-model", api_key="sk-test", n=3, cache_dir=tmp_path / "cache",
                             backoff_s=0.01, max_attempts=4)


def test_rate_limit_malformed_and_rejected_answers_end_in_clean_paraphrases(tmp_path, opts):
    path = tmp_path / "pleasant.toml"
    path.write_text(PROMPT, encoding="utf-8")
    server = Server([
        (429, {"Retry-After": "0.2"}, {"error": {"message": "slow down"}}),
        completion("Sure! Here are some ideas: feeling fine, feeling good"),  # malformed
        # negative pole: one good, one repeat of the canonical, one repeat of the first
        completion(json.dumps(["I feel uneasy.", "my emotions are UNCOMFORTABLE", "I feel  uneasy"])),
        completion("```json\n" + json.dumps(["I am ill at ease.", "Something bothers me."]) + "\n```"),
        # positive pole: the prohibited word in any case is rejected
        completion(json.dumps(["I feel PLEASANT.", "I feel good.", "Pleasantly calm, I am."])),
        completion(json.dumps(["Everything feels nice.", "I am content."])),
    ])
    sleeps = []
    try:
        para = Paraphraser(dataclasses.replace(opts, base_url=server.url), sleep=sleeps.append)
        outcomes = augment_file(path, para, "en", 3)
        assert [(o.pole, o.kept, o.asked, o.short) for o in outcomes] == [
            ("pleasant.negative", 3, 3, False), ("pleasant.positive", 3, 3, False)]
    finally:
        server.close()
    assert sleeps[0] == pytest.approx(0.2)  # honoured Retry-After
    assert len(server.requests) == 6
    path_, auth, body = server.requests[0]
    assert path_ == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "test-model"
    ask = body["messages"][-1]["content"]
    assert "My emotions are uncomfortable." in ask and "3" in ask and '"pleasant"' in ask
    assert "imaginative assistant" in body["messages"][0]["content"]
    # the demonstration: the English one, asked and answered before the request
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert "The weather is nice today." in body["messages"][1]["content"]
    assert json.loads(body["messages"][2]["content"]) == DEMONSTRATIONS["en"][2]
    # the re-ask names what was already used or rejected
    assert "my emotions are UNCOMFORTABLE" in server.requests[3][2]["messages"][-1]["content"]

    text = path.read_text(encoding="utf-8")
    emo = parse_prompt_file(text, "pleasant", str(path))
    assert emo.negative.sentences["en"] == ["My emotions are uncomfortable.", "I feel uneasy.",
                                            "I am ill at ease.", "Something bothers me."]
    assert emo.positive.sentences["en"] == ["My emotions are pleasant.", "I feel good.",
                                            "Everything feels nice.", "I am content."]
    assert emo.negative.sentences["ja"] == ["私の気持ちは不快です。"]
    assert "# canonical" in text and text.startswith('# Bipolar emotion "pleasant".')

    # Rerun: nothing left to ask; a fresh file is answered entirely from the cache.
    path.write_text(PROMPT, encoding="utf-8")
    dead = Server([])
    try:
        para = Paraphraser(dataclasses.replace(opts, base_url=dead.url))
        assert sum(o.kept for o in augment_file(path, para, "en", 3)) == 6
    finally:
        dead.close()
    assert dead.requests == []
    assert parse_prompt_file(path.read_text(encoding="utf-8"), "pleasant").positive.sentences["en"][1] == "I feel good."


def test_japanese_run_prohibits_the_japanese_key_word_after_the_japanese_demonstration(tmp_path, opts):
    path = tmp_path / "pleasant.toml"
    path.write_text(PROMPT, encoding="utf-8")
    server = Server([
        completion(json.dumps(["気分が悪いです。", "心地よくないです。", "嫌な\u0000気分です。", "あ" * 501])),
        completion(json.dumps(["居心地が悪いです。"])),
        completion(json.dumps(["とても心地よい気分です。", "気分が良いです。", "快適です。"])),
    ])
    try:
        para = Paraphraser(dataclasses.replace(opts, base_url=server.url))
        outcomes = augment_file(path, para, "ja", 2)
    finally:
        server.close()
    assert [(o.kept, o.asked) for o in outcomes] == [(2, 2), (2, 2)]
    assert para.last_rejections == {"prohibited word": 1}
    messages = server.requests[0][2]["messages"]
    assert "今日は天気が良いです。" in messages[1]["content"] and '"天気"' in messages[1]["content"]
    assert json.loads(messages[2]["content"]) == DEMONSTRATIONS["ja"][2]
    ask = messages[-1]["content"]
    assert "in Japanese" in ask and '"心地よい"' in ask and "私の気持ちは不快です。" in ask
    emo = parse_prompt_file(path.read_text(encoding="utf-8"), "pleasant")
    # "心地よくない" holds the prohibited word; a NUL and a 501-character line cannot be kept
    assert emo.negative.sentences["ja"][1:] == ["気分が悪いです。", "居心地が悪いです。"]
    assert emo.positive.sentences["ja"][1:] == ["気分が良いです。", "快適です。"]
    assert emo.positive.sentences["en"] == ["My emotions are pleasant."]


def test_demonstrations_follow_their_own_rules():
    for language, (sentence, word, answer) in DEMONSTRATIONS.items():
        assert len(answer) == 3 and contains_word(sentence, word), language
        assert not any(contains_word(s, word) or script_problem(s, language) for s in answer), language
        assert len({normalise(s) for s in [sentence, *answer]}) == 4, language
        assert parse_answer(json.dumps(answer, ensure_ascii=False)) == answer
    german = messages_for("Mir geht es gut.", 2, "de", "gut", [])
    assert german[1] == messages_for("I am fine.", 5, "en", "fine", [])[1]  # no German one: English
    assert "in German" in german[-1]["content"] and '"gut"' in german[-1]["content"]
    assert "in English" in german[1]["content"] and "Paraphrase the following sentence in 3" in german[1]["content"]


def cli(tmp_path, server, *paths, n=2):
    return main(["paraphrase", *map(str, paths), "--language", "en", "--n", str(n), "--max-rounds", "2",
                 "--model", "m", "--base-url", server.url, "--cache", str(tmp_path / "cache")])


def test_a_short_pole_keeps_what_was_accepted_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMOCLAP_LLM_API_KEY", "sk-test")
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "mood.toml").write_text(PROMPT, encoding="utf-8")
    (folder / "pleasant.toml").write_text(PROMPT.replace("My emotions are uncomfortable.", "I feel bad."),
                                          encoding="utf-8")
    server = Server([
        completion(json.dumps(["I feel uneasy.", "I feel pleasant."])),  # mood.negative, round 1
        completion(json.dumps(["I feel uneasy!"])),                      # round 2: a repeat; short
        completion(json.dumps(["I feel good.", "I am content."])),       # mood.positive
        completion(json.dumps(["I feel uneasy.", "I am ill at ease."])),  # pleasant.negative
        # pleasant.positive asks what mood.positive asked: answered from the cache
    ])
    try:
        code = cli(tmp_path, server, folder)
    finally:
        server.close()
    out, err = capsys.readouterr()
    assert code == 1 and len(server.requests) == 4
    assert "1 pole(s) short of 2 paraphrases after 2 round(s)" in err and "mood.negative (kept 1 of 2)" in err
    assert "positive" not in err and "pleasant.negative" not in err
    assert "| mood.negative | 1 of 2 (short) | prohibited word: 1, repeat: 1 |" in out
    assert "| pleasant.negative | 2 of 2 | - |" in out and "pleasant.toml: +4 paraphrases" in out
    mood = parse_prompt_file((folder / "mood.toml").read_text(encoding="utf-8"), "mood")
    assert mood.negative.sentences["en"] == ["My emotions are uncomfortable.", "I feel uneasy."]
    assert mood.positive.sentences["en"][1:] == ["I feel good.", "I am content."]
    pleasant = parse_prompt_file((folder / "pleasant.toml").read_text(encoding="utf-8"), "pleasant")
    assert pleasant.negative.sentences["en"][1:] == ["I feel uneasy.", "I am ill at ease."]
    assert pleasant.positive.sentences["en"][1:] == ["I feel good.", "I am content."]

    # The rerun asks only for what is missing, and ends well once it is found.
    server = Server([completion(json.dumps(["Something bothers me."]))])
    try:
        assert cli(tmp_path, server, folder) == 0
    finally:
        server.close()
    assert len(server.requests) == 1 and "short" not in capsys.readouterr().err
    mood = parse_prompt_file((folder / "mood.toml").read_text(encoding="utf-8"), "mood")
    assert mood.negative.sentences["en"][1:] == ["I feel uneasy.", "Something bothers me."]


def test_a_server_failure_stops_the_run_keeping_what_was_accepted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMOCLAP_LLM_API_KEY", "sk-test")
    path = tmp_path / "pleasant.toml"
    path.write_text(PROMPT, encoding="utf-8")
    other = tmp_path / "positive.toml"
    other.write_text(PROMPT, encoding="utf-8")
    server = Server([
        completion(json.dumps(["I feel uneasy.", "I am ill at ease."])),  # negative: complete
        completion(json.dumps(["I feel good.", "I feel pleasant."])),     # positive: one of two
        (401, {}, {"error": {"message": "key revoked"}}),                 # then the server refuses
    ])
    try:
        code = cli(tmp_path, server, path, other)
    finally:
        server.close()
    out, err = capsys.readouterr()
    assert code == 2 and "refused (401)" in err and "key revoked" in err and len(server.requests) == 3
    assert "| pleasant.positive | 1 of 2 (short) | prohibited word: 1 |" in out
    emo = parse_prompt_file(path.read_text(encoding="utf-8"), "pleasant")
    assert emo.negative.sentences["en"][1:] == ["I feel uneasy.", "I am ill at ease."]
    assert emo.positive.sentences["en"][1:] == ["I feel good."]
    assert other.read_text(encoding="utf-8") == PROMPT  # never reached
    assert not list(tmp_path.glob("*.tmp"))


def test_unreachable_server_gives_up_with_a_clear_message(opts):
    server = Server([])
    url = server.url
    server.close()
    para = Paraphraser(dataclasses.replace(opts, base_url=url), sleep=lambda s: None)
    with pytest.raises(ParaphraseError, match=r"127\.0\.0\.1.*test-model.*gave up after 4 attempts.*cannot reach"):
        para.paraphrase("I trust.", "en", "trust", 2)


def test_refused_request_is_not_retried(opts):
    server = Server([(401, {}, {"error": {"message": "invalid api key"}})])
    try:
        para = Paraphraser(dataclasses.replace(opts, base_url=server.url), sleep=lambda s: None)
        with pytest.raises(ParaphraseError, match=r"refused \(401\).*invalid api key"):
            para.paraphrase("I trust.", "en", "trust", 2)
    finally:
        server.close()
    assert len(server.requests) == 1


def test_text_helpers():
    assert normalise("Ｉ feel  GOOD!") == normalise("i feel good")
    assert contains_word("Pleasantly so", "pleasant") and not contains_word("unpleasant", "pleasant")
    assert contains_word("私は幸せです", "幸せ")
    assert contains_word("とても心地よかった", "心地よい") and contains_word("心地よさ", "心地よい")
    assert not contains_word("居心地が悪い", "心地よい") and contains_word("目覚めた", "目覚め")
    assert parse_answer('["a", "b"]') == ["a", "b"]
    for bad in ("", "no list", '["a", 3]', "[unclosed"):
        with pytest.raises(ValueError):
            parse_answer(bad)
