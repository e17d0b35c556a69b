"""`[encoder] backend = "triton"` against a real Triton server: PyTriton's bundled
`tritonserver` (`daemon.triton_host`, run from `.venv-triton`, Debian's Python) hosting
the tiny bundle's ONNX model behind Triton's dynamic batcher on 127.0.0.1.

Scores and embeddings through Triton equal the in-process ones; start-up refuses a
wrong model, a server that is not there, and a model built from another bundle; a
server that goes away costs the encode stage the utterances of that time (dropped as
`encoder_error`, on /healthz) and nothing more: it embeds again once the server is back.
"""
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from daemon import cli
from daemon.batcher import Batcher
from daemon.config import parse_config
from daemon.encoder import AudioEncoder, EncoderError, EncoderOptions
from daemon.links import Sender
from emoclap.audio import write_wav
from emoclap.bundle import load_bundle
from emoclap.record import Utterance
from tests.servicekit import free_port, service_config, with_service
from tests.speech import RATE, dialogue

REPO = Path(__file__).resolve().parent.parent
TRITON_PYTHON = REPO / ".venv-triton" / "bin" / "python"
# Probabilities through Triton may differ from in-process ones only by float rounding
# where Triton's dynamic batcher ran a row in a larger batch (same ONNX Runtime build,
# masked pooling): well under 1e-5. In practice they are bit-identical.
TOLERANCE = 1e-5

try:
    import tritonclient.grpc as grpcclient
    from daemon.triton import TritonAudioEncoder, TritonBatchError, TritonOptions
except ImportError:
    pytest.fail("tritonclient is missing: run ./bootstrap test (it installs the triton extra)", pytrace=False)


class Host:
    """`python -m daemon.triton_host` in its own process group, restartable on the same ports."""

    def __init__(self, bundle: Path, log: Path, queue_delay_us: int = 20_000):
        if not TRITON_PYTHON.exists():
            pytest.fail(f"{TRITON_PYTHON} is missing: run ./bootstrap test (it builds .venv-triton "
                        "with Debian's python3.11 and nvidia-pytriton)", pytrace=False)
        self.ports = [free_port() for _ in range(3)]
        self.url = f"127.0.0.1:{self.ports[0]}"
        self.log = log
        # A long queue delay, so that the concurrent requests below do meet in one batch.
        self.argv = [str(TRITON_PYTHON), "-m", "daemon.triton_host", str(bundle),
                     "--grpc-port", str(self.ports[0]), "--http-port", str(self.ports[1]),
                     "--metrics-port", str(self.ports[2]), "--max-batch", "16", "--preferred", "4,8",
                     "--queue-delay-us", str(queue_delay_us), "--threads", "1"]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> "Host":
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        client = grpcclient.InferenceServerClient(self.url)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"triton_host exited with {self.proc.returncode}:\n{self.tail()}")
                try:
                    if client.is_model_ready("emoclap_audio", client_timeout=1.0):
                        return self
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.2)
        finally:
            client.close()
        self.stop()
        pytest.fail(f"Triton not ready within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own group: the host and its tritonserver
            self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def host(tiny_bundle, tmp_path_factory):
    server = Host(tiny_bundle, tmp_path_factory.mktemp("triton") / "host.log").start()
    yield server
    server.stop()


def test_scores_through_triton_equal_in_process(host, tiny_bundle, tmp_path, capsys):
    """`emoclapd score` with [encoder] backend = "triton" and with ONNX Runtime in process."""
    audio, spans = dialogue([0.5, "Good morning, I am looking for a new phone.", 0.8,
                             "Is this one waterproof, and how long does the battery last?", 0.6,
                             "I will take it.", 0.5], tmp_path)
    wav = tmp_path / "customer.wav"
    write_wav(wav, audio, RATE)
    rows = {}
    for backend in ("onnxruntime", "triton"):
        config = tmp_path / f"{backend}.toml"
        config.write_text(f'[encoder]\nbackend = "{backend}"\ntriton_url = "{host.url}"\nmax_batch = 2\n')
        code = cli.main(["score", str(wav), "--role", "customer", "--bundle", str(tiny_bundle), "--prompts",
                         str(REPO / "prompts"), "--cache", "", "--provider", "cpu", "--config", str(config)])
        out, err = capsys.readouterr()
        assert code == 0, err
        rows[backend] = [json.loads(line) for line in out.splitlines()]
    assert len(rows["triton"]) == len(spans) == 3
    for local, remote in zip(rows["onnxruntime"], rows["triton"]):
        assert (local["start"], local["end"]) == (remote["start"], remote["end"])
        assert set(local["scores"]) == set(remote["scores"])
        for emotion, p in local["scores"].items():
            assert abs(p - remote["scores"][emotion]) <= TOLERANCE, (emotion, p, remote["scores"][emotion])


def test_embeddings_equal_while_the_dynamic_batcher_merges(host, tiny_bundle):
    """Chunked long utterances, batches of several lengths, and four gateways' requests of
    one shape that Triton's dynamic batcher runs together: each row as in process."""
    bundle = load_bundle(tiny_bundle)
    options = EncoderOptions(provider="cpu", max_batch=4, intra_op_threads=1)
    local = AudioEncoder(bundle, options=options)
    remote = TritonAudioEncoder(bundle, TritonOptions(url=host.url), options)
    rng = np.random.default_rng(7)
    audios = [(0.1 * rng.standard_normal(n)).astype(np.float32)
              for n in (300, 4000, 4000, 9000, 16000, 31000, 12345, 200_000, 8000)]
    want, got = local.encode(audios), remote.encode(audios)
    assert got[0] is None and remote.skipped_short == 1  # shorter than the bundle's minimum
    for w, g in zip(want[1:], got[1:]):
        assert np.abs(w - g).max() <= 1e-6
    before = host_stats(host)
    same_shape = [[(0.1 * rng.standard_normal(6000)).astype(np.float32) for _ in range(2)] for _ in range(4)]
    answers: dict[int, list] = {}
    start = threading.Barrier(4)

    def gateway(i):
        start.wait(10)
        for _ in range(5):
            answers.setdefault(i, []).append(remote.encode(same_shape[i]))
    threads = [threading.Thread(target=gateway, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(4):
        expected = local.encode(same_shape[i])
        for answer in answers[i]:
            assert all(np.abs(e - a).max() <= 1e-6 for e, a in zip(expected, answer))
    after = host_stats(host)
    requests, runs = after[0] - before[0], after[1] - before[1]
    assert requests == 20 and runs < requests, (requests, runs)  # the dynamic batcher did merge


def host_stats(host) -> tuple[int, int]:
    """(requests, model executions) from Triton's own Prometheus metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{host.ports[2]}/metrics", timeout=10).read().decode()
    found = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in ("nv_inference_request_success", "nv_inference_exec_count") and 'model="emoclap_audio"' in line:
            found[name] = int(float(line.rsplit(" ", 1)[1]))
    return found.get("nv_inference_request_success", 0), found.get("nv_inference_exec_count", 0)


def test_start_up_refuses_what_would_not_match(host, tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    with pytest.raises(EncoderError, match="model 'other' is not ready"):
        TritonAudioEncoder(bundle, TritonOptions(url=host.url, model="other"))
    with pytest.raises(EncoderError, match="built from another bundle"):
        TritonAudioEncoder(dataclasses.replace(bundle, hash="0" * 64), TritonOptions(url=host.url))
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(EncoderError, match=f"Triton at {nobody} \\(encoder.triton_url\\): UNAVAILABLE"):
        TritonAudioEncoder(bundle, TritonOptions(url=nobody, timeout_s=3.0))
    assert time.monotonic() - started < 10


def test_encode_stage_survives_triton_going_away(host, tiny_bundle, tmp_path):
    """The encode and serve stages in this process on Triton: while it is gone, batches
    fail, utterances are dropped as encoder_error, /healthz says so; once it is back,
    utterances are embedded and published again."""
    cfg = service_config(tmp_path, tiny_bundle)
    cfg.encoder = dataclasses.replace(parse_config("").encoder, backend="triton", triton_url=host.url,
                                      triton_timeout_s=5.0, max_batch=4)
    rng = np.random.default_rng(3)
    seq = iter(range(1, 10_000))

    def utterances(n):
        t0 = time.time()
        return [Utterance("till", "customer", next(seq), 0.0, 1.0, t0, time.time(),
                          audio=(0.1 * rng.standard_normal(RATE)).astype(np.float32)) for _ in range(n)]

    async def body(svc):
        floor, metrics = svc.parts.floor, svc.parts.server.metrics
        sender = Sender(cfg.stages.utterances, 1000, block=True)

        async def until(condition, seconds, what):
            deadline = time.monotonic() + seconds
            while not condition():
                assert time.monotonic() < deadline, f"{what} within {seconds} s"
                await asyncio.sleep(0.1)

        try:
            sender.send_utterances(utterances(3))
            await until(lambda: floor.published >= 3, 30, "3 utterances published through Triton")
            assert not [p for p in floor.problems() if "Triton" in p]
            await asyncio.to_thread(host.stop)
            sender.send_utterances(utterances(4))
            await until(lambda: metrics.drop_counts().get("encoder_error", 0) >= 4, 30,
                        "4 utterances dropped as encoder_error")
            # The worker's next heartbeat carries its encoder's problem to the gateway.
            await until(lambda: [p for p in floor.problems() if f"Triton at {host.url} unreachable" in p],
                        5, "the outage in /healthz")
            assert floor.published == 3
            await asyncio.to_thread(host.start)
            deadline = time.monotonic() + 30
            while floor.published < 5:  # until one batch after the restart gets through
                assert time.monotonic() < deadline, "Triton not used again within 30 s of its restart"
                sender.send_utterances(utterances(1))
                await asyncio.sleep(0.5)
            await until(lambda: not [p for p in floor.problems() if "Triton" in p], 5,
                        "the outage cleared from /healthz")
            assert svc.parts.batcher.failures >= 1 and svc.parts.worker.is_alive()
        finally:
            sender.abandon()
    with_service(cfg, body)


def test_batcher_keeps_running_when_a_batch_fails(host, tiny_bundle):
    """A request Triton refuses fails that batch only; the error says it was not logged yet."""
    bundle = load_bundle(tiny_bundle)
    encoder = TritonAudioEncoder(bundle, TritonOptions(url=host.url), EncoderOptions(max_batch=4))
    real = encoder._infer
    calls = []

    def corrupt_once(wave, lengths):  # a request the server must reject: batch sizes that differ
        calls.append(len(lengths))
        return real(wave, np.concatenate([lengths, lengths]) if len(calls) == 1 else lengths)
    encoder._infer = corrupt_once
    batcher = Batcher(encoder)
    try:
        audio = (0.1 * np.random.default_rng(0).standard_normal(RATE)).astype(np.float32)
        with pytest.raises(TritonBatchError) as failed:
            batcher.submit(audio).result(30)
        assert not failed.value.reported and encoder.available
        assert batcher.submit(audio).result(30) is not None
        assert batcher.failures == 1
    finally:
        batcher.close()
