import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from emoclap.prompts import parse_prompt_file
from trainer.paraphrase import (ParaphraseError, ParaphraseOptions, Paraphraser, augment_file,
                                contains_word, normalise, parse_answer)

PROMPT = '''# Bipolar emotion "pleasant".
label = "Pleasant – unpleasant"
key_word = "pleasant"

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
        assert augment_file(path, para, "en", 3) == 6
    finally:
        server.close()
    assert sleeps[0] == pytest.approx(0.2)  # honoured Retry-After
    assert len(server.requests) == 6
    path_, auth, body = server.requests[0]
    assert path_ == "/v1/chat/completions" and auth == "Bearer sk-test" and body["model"] == "test-model"
    ask = body["messages"][-1]["content"]
    assert "My emotions are uncomfortable." in ask and "3" in ask and '"pleasant"' in ask
    assert "imaginative assistant" in body["messages"][0]["content"]
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
        assert augment_file(path, para, "en", 3) == 6
    finally:
        dead.close()
    assert dead.requests == []
    assert parse_prompt_file(path.read_text(encoding="utf-8"), "pleasant").positive.sentences["en"][1] == "I feel good."


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
    assert parse_answer('["a", "b"]') == ["a", "b"]
    for bad in ("", "no list", '["a", 3]', "[unclosed"):
        with pytest.raises(ValueError):
            parse_answer(bad)
