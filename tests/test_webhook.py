"""The alert webhook against real HTTP receivers on 127.0.0.1: retries with back-off,
timeouts, a full queue, redirects, secrets kept out of logs, and hostile [webhook] tables."""
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import ConfigError, parse_config
from daemon.metrics import Metrics
from daemon.webhook import KEYS, WebhookConfig, WebhookSender, parse_webhook

SECRET = "Bearer s3cret-token-value"
ALERT = {"type": "alert", "state": "fired", "id": "ready to buy@s1-1000", "rule": "ready to buy",
         "station": "s1", "role": "customer", "emotion": "purchase_intention", "direction": "above",
         "threshold": 0.7, "rearm": 0.6, "value": 0.75, "count": 3, "visit": None, "time": 1.0, "seq": 3}


class Receiver:
    """An HTTP server on 127.0.0.1 answering POSTs from a script of statuses: an int is
    that status, "hang" holds the request until `release` (or the test ends)."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, dict(self.headers), body))
                step = receiver.script.pop(0) if receiver.script else 200
                if step == "hang":
                    receiver.release.wait(30)
                    return
                self.send_response(step)
                if step in (301, 302):
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    made = []

    def make(*script):
        made.append(Receiver(script))
        return made[-1]
    yield make
    for r in made:
        r.close()


def count(metrics, outcome):
    return metrics.registry.get_sample_value("emoclap_webhook_deliveries_total", {"outcome": outcome}) or 0


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_retries_with_backoff_then_delivers_keeping_the_secret_out_of_logs(receivers, caplog):
    r = receivers(500, 503, 200)
    metrics = Metrics()
    cfg = WebhookConfig(r.url("/hook?token=q-secret"), timeout_s=5, retries=3, backoff_s=0.1,
                        headers={"Authorization": SECRET})
    sender = WebhookSender(cfg, metrics).start()
    with caplog.at_level(logging.DEBUG):
        started = time.monotonic()
        assert sender.submit(ALERT)
        assert not sender.submit(dict(ALERT, state="cleared"))  # events = ["fired"] by default
        assert wait_for(lambda: count(metrics, "ok") == 1)
        elapsed = time.monotonic() - started
        sender.close(1.0)
    assert len(r.requests) == 3 and elapsed >= 0.1 + 0.2  # back-off 0.1 s, then 0.2 s
    path, headers, body = r.requests[-1]
    assert path == "/hook?token=q-secret" and json.loads(body) == ALERT
    assert headers["Authorization"] == SECRET and headers["Content-Type"] == "application/json"
    assert metrics.registry.get_sample_value("emoclap_webhook_retries_total") == 2
    assert count(metrics, "failed") == 0 and sender.problem() is None


def test_failures_timeouts_and_health(receivers, caplog):
    r = receivers("hang", 404, 200)
    metrics = Metrics()
    sender = WebhookSender(WebhookConfig(r.url("/x?token=q-secret"), timeout_s=0.3, retries=0,
                                         headers={"Authorization": SECRET}), metrics).start()
    with caplog.at_level(logging.DEBUG):
        sender.submit(ALERT)
        assert wait_for(lambda: count(metrics, "failed") == 1)
        assert sender.problem() == "webhook: last 1 deliveries failed: no answer within 0.3 s"
        sender.configure(WebhookConfig(r.url(), timeout_s=5, retries=3, backoff_s=0.01))
        sender.submit(ALERT)  # 404: not asked again, whatever `retries` says
        assert wait_for(lambda: count(metrics, "failed") == 2)
        assert sender.problem() == "webhook: last 2 deliveries failed: HTTP 404"
        assert metrics.registry.get_sample_value("emoclap_webhook_retries_total") == 0
        sender.submit(ALERT)
        assert wait_for(lambda: count(metrics, "ok") == 1) and sender.problem() is None
        sender.close(0.0)
    assert "failed after 1 attempt(s): no answer within 0.3 s" in caplog.text
    assert "s3cret" not in caplog.text and "q-secret" not in caplog.text


def test_redirects_are_not_followed(receivers):
    r = receivers(302)
    metrics = Metrics()
    sender = WebhookSender(WebhookConfig(r.url(), retries=3, headers={"Authorization": SECRET}), metrics).start()
    sender.submit(ALERT)
    assert wait_for(lambda: count(metrics, "failed") == 1)
    sender.close(0.0)
    assert [p for p, _, _ in r.requests] == ["/hook"]  # /elsewhere never saw the secret
    assert "redirects are not followed" in sender.problem()


def test_a_full_queue_drops_and_counts_never_blocks(receivers):
    r = receivers("hang")
    metrics = Metrics()
    sender = WebhookSender(WebhookConfig(r.url(), timeout_s=30, retries=0, queue=2), metrics)
    started = time.monotonic()
    results = [sender.submit(dict(ALERT, id=f"a{i}")) for i in range(5)]  # before the thread runs
    assert results == [True, True, False, False, False] and count(metrics, "dropped") == 3
    assert metrics.registry.get_sample_value("emoclap_queue_depth", {"queue": "webhook"}) == 2
    sender.start()
    assert wait_for(lambda: len(r.requests) == 1)  # the first is held by the receiver
    assert sender.submit(dict(ALERT, id="a5"))
    assert time.monotonic() - started < 5  # submitting never waited on the receiver
    sender.close(0.0)  # the two still queued are dropped at shutdown
    assert count(metrics, "dropped") == 5 and count(metrics, "ok") == 0


def test_webhook_configuration():
    cfg = parse_config("""
[webhook]
url = "https://alerts.example.com/emoclap?key=k"
timeout_s = 2
retries = 0
backoff_s = 0.5
events = ["fired", "cleared"]
headers = { Authorization = "Bearer x", "X-Store" = "12" }
""")
    assert cfg.webhook == WebhookConfig("https://alerts.example.com/emoclap?key=k", 2.0, 0, 0.5,
                                        {"Authorization": "Bearer x", "X-Store": "12"}, ("fired", "cleared"))
    assert "Bearer" not in repr(cfg.webhook) and "key=k" not in repr(cfg.webhook)
    assert cfg.webhook.where() == "https://alerts.example.com/emoclap"
    for text, message in [
        ('url = "ftp://x/"', "webhook.url: expected an http:// or https:// URL"),
        ('url = "http://user:pw@x/"', "webhook.url: credentials in the URL are refused"),
        ('url = "http://x:99999/"', "webhook.url: not a valid URL"),
        ("timeout_s = 1", "webhook.url: required"),
        ('url = "http://x/"\ntimeout_s = nan', "webhook.timeout_s: expected a number"),
        ('url = "http://x/"\nretries = 1.5', "webhook.retries: expected an integer"),
        ('url = "http://x/"\nevents = ["fired", "fired"]', "webhook.events: expected a non-empty list"),
        ('url = "http://x/"\nevents = []', "webhook.events: expected a non-empty list"),
        ('url = "http://x/"\nheaders = { "Bad Name" = "v" }', "webhook.headers: 'Bad Name' is not a header"),
        ('url = "http://x/"\nheaders = { Host = "v" }', "webhook.headers: 'Host' is not a header"),
        ('url = "http://x/"\nheaders = { X = "a\\r\\nInjected: 1" }', "webhook.headers.X: expected a string"),
        ('url = "http://x/"\nurl2 = 1', "webhook.url2: unknown key"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(f"[webhook]\n{text}\n")
        assert str(err.value).startswith(f"config.toml: {message}"), str(err.value)
    with pytest.raises(ConfigError, match="config.toml: webhook: expected a table"):
        parse_config('webhook = "http://x/"')


values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(), st.text(max_size=30),
                   st.sampled_from(["http://127.0.0.1/", "https://h:1/p?q", "http://[::1]:80/", "http://h:x/",
                                    "http://", "HTTP://h/", "http://h/\x00", "javascript:alert(1)"]),
                   st.lists(st.sampled_from(["fired", "cleared", "x"]) | st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=10), st.text(max_size=20) | st.integers(), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS + ("urls",)), values, max_size=8) | values)
def test_any_webhook_table_parses_or_names_the_key(table):
    try:
        cfg = parse_webhook(table)
    except ValueError as exc:
        assert str(exc).startswith("webhook")
        return
    assert cfg.url.startswith(("http://", "https://")) and cfg.queue >= 1 and cfg.timeout_s > 0
    assert set(cfg.events) <= {"fired", "cleared"} and all(isinstance(v, str) for v in cfg.headers.values())
