import json
import threading

import numpy as np
import onnxruntime as ort
import pytest

from daemon.batcher import Batcher, BatcherOptions
from emoclap.bundle import load_bundle, write_manifest
from daemon.encoder import AudioEncoder, EncoderError, EncoderOptions, TextEncoder
from tests.tiny_bundle import DIM, copy_bundle

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def encoder(bundle):
    return AudioEncoder(bundle, options=EncoderOptions(provider="cpu", intra_op_threads=1, max_batch=8))


def noise(seconds, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)


def test_provider_is_reported_and_cpu_is_quiet(bundle, capfd):
    enc = AudioEncoder(bundle, provider="auto")
    assert enc.provider == ("cuda" if HAS_CUDA and enc.provider == "cuda" else "cpu")
    assert AudioEncoder(bundle, provider="cpu").provider == "cpu"
    out, err = capfd.readouterr()
    if not HAS_CUDA:
        assert err == "" and out == ""


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
def test_cuda_without_cuda_is_a_clear_error(bundle):
    with pytest.raises(EncoderError, match="provider 'cuda' requested.*emoclap\\[gpu\\]"):
        AudioEncoder(bundle, provider="cuda")
    with pytest.raises(ValueError, match="provider must be"):
        EncoderOptions(provider="tpu")


def test_dimension_and_io_mismatch_are_refused(tiny_bundle, tmp_path):
    folder = copy_bundle(tiny_bundle, tmp_path / "b")
    manifest = json.loads((folder / "manifest.json").read_text())
    write_manifest(folder, {**manifest, "embedding_dim": DIM * 2})
    with pytest.raises(EncoderError, match="does not match embedding_dim 32"):
        AudioEncoder(load_bundle(folder), provider="cpu")
    swapped = {**manifest, "audio_encoder": {"file": "text_encoder.onnx"},
               "text_encoder": {"file": "audio_encoder.onnx", "max_tokens": 8}}
    write_manifest(folder, swapped)
    with pytest.raises(EncoderError, match="inputs are .*input_ids"):
        AudioEncoder(load_bundle(folder), provider="cpu")


def test_batched_equals_single(encoder):
    utterances = [noise(s, i) for i, s in enumerate((1.0, 0.3, 2.7, 0.55, 1.9, 4.0, 0.8, 3.3, 1.2, 2.2))]
    batched = encoder.embed(utterances)
    single = np.stack([encoder.embed([u])[0] for u in utterances])
    error = float(np.abs(batched - single).max())
    print(f"\nbatching invariance: max |batched - single| = {error:.2e}")
    assert batched.shape == (10, DIM)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert error < 1e-4
    # Different utterances really do give different embeddings.
    assert np.abs(batched[0] - batched[1]).max() > 1e-3


def test_long_utterances_are_split_and_averaged(bundle):
    enc = AudioEncoder(bundle, options=EncoderOptions(provider="cpu", max_chunk_s=2.0))
    long = noise(5.0, 7)  # three equal chunks of 5/3 s
    third = long.size // 3 + 1
    chunks = [long[i:i + third] for i in range(0, long.size, third)]
    parts = enc.embed(chunks)
    weights = np.array([c.size for c in chunks], np.float32)[:, None]
    want = (parts * weights).sum(0)
    want /= np.linalg.norm(want)
    np.testing.assert_allclose(enc.embed([long])[0], want, atol=1e-5)
    capped = AudioEncoder(bundle, options=EncoderOptions(provider="cpu", max_chunk_s=2.0,
                                                         long_utterances="cap"))
    np.testing.assert_allclose(capped.embed([long])[0], enc.embed([long[:32000]])[0], atol=1e-5)


def test_short_utterances_are_skipped_and_counted(bundle):
    enc = AudioEncoder(bundle, options=EncoderOptions(provider="cpu", min_utterance_s=0.1))
    assert enc.min_samples == 1600
    out = enc.encode([noise(0.05, 1), noise(0.5, 2), np.zeros(0, np.float32)])
    assert out[0] is None and out[2] is None and out[1].shape == (DIM,)
    assert enc.skipped_short == 2
    with pytest.raises(ValueError, match="minimum is 1600"):
        enc.embed([noise(0.05, 1)])
    # The model's own minimum applies when the configured one is lower.
    tiny = AudioEncoder(bundle, options=EncoderOptions(provider="cpu", min_utterance_s=0.0))
    assert tiny.min_samples == bundle.min_samples
    assert tiny.encode([noise(0.02, 3)]) == [None]


def test_batcher_groups_stations_and_matches_single(encoder):
    batcher = Batcher(encoder, BatcherOptions(max_batch=8, max_wait_ms=50))
    utterances = {f"st{s}": [noise(0.5 + 0.3 * k + 0.1 * s, 10 * s + k) for k in range(4)] for s in range(6)}
    results: dict = {}

    def station(name):
        futures = [batcher.submit(u, name) for u in utterances[name]]
        results[name] = [f.result(timeout=30) for f in futures]

    threads = [threading.Thread(target=station, args=(n,)) for n in utterances]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    short = batcher.submit(noise(0.01, 99), "st0").result(timeout=30)
    batcher.close()
    assert short is None
    assert batcher.utterances == 25 and batcher.batches < 24
    for name, audios in utterances.items():
        single = np.stack([encoder.embed([a])[0] for a in audios])
        assert np.abs(np.stack(results[name]) - single).max() < 1e-4


def test_batcher_survives_a_failing_batch(encoder):
    class Flaky:
        def __init__(self):
            self.calls = 0

        def encode(self, audios):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("boom")
            return encoder.encode(audios)

    batcher = Batcher(Flaky(), BatcherOptions(max_batch=4, max_wait_ms=0))
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(noise(0.5, 1)).result(timeout=30)
    assert batcher.submit(noise(0.5, 2)).result(timeout=30).shape == (DIM,)
    batcher.close()
    assert batcher.failures == 1
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(noise(0.5, 3)).result(timeout=1)


def test_an_utterance_is_encoded_while_another_one_s_words_are_read():
    """The text path in two stages: a second utterance's audio pass runs during the first
    one's decode, its words join that decode at the next step, each is answered when its
    own words are read, and a failed step fails only the utterances in it."""
    import time

    from daemon.transcriber import Reading, WordsError

    class SteppedWords:
        reads_words = True

        def __init__(self):
            self.log, self.left, self.steps = [], {}, []

        def encode(self, audios, words=None, defer_words=False):
            assert defer_words
            self.log.append(("encode", time.monotonic()))
            return [Reading(np.full(DIM, a[0], np.float32), unread=[(None, 1.0)]) for a in audios]

        def start_words(self, readings):
            for r in readings:
                self.left[id(r)] = [r, round(r.embedding[0] * 10)]  # steps its words take
            return []

        def step_words(self):
            time.sleep(0.05)
            self.steps.append(sorted(round(r.embedding[0] * 10) for r, _ in self.left.values()))
            if any(round(r.embedding[0] * 10) == 7 for r, _ in self.left.values()):  # the poisoned utterance
                failed = [r for r, _ in self.left.values()]
                self.left.clear()
                raise WordsError(failed, RuntimeError("decoder broke"))
            done = []
            for key, entry in list(self.left.items()):
                entry[1] -= 1
                if entry[1] <= 0:
                    entry[0].transcript, entry[0].unread = "words", None
                    done.append(entry[0])
                    del self.left[key]
            return done

    enc = SteppedWords()
    batcher = Batcher(enc, BatcherOptions(max_batch=4, max_wait_ms=0))
    first = batcher.submit(np.full(8000, 0.8, np.float32))  # 8 steps of words
    time.sleep(0.12)  # the first is being read now
    second = batcher.submit(np.full(8000, 0.2, np.float32))  # 2 steps
    assert second.result(timeout=5).transcript == "words" and not first.done()  # answered first
    assert first.result(timeout=5).transcript == "words"
    encoded = [t for what, t in enc.log if what == "encode"]
    assert len(encoded) == 2 and encoded[1] < encoded[0] + 0.4  # encoded during the first decode
    assert any(len(s) == 2 for s in enc.steps)  # the second's words shared the first's steps
    assert len(enc.steps) < 8 + 2
    poisoned = batcher.submit(np.full(8000, 0.7, np.float32))
    with pytest.raises(RuntimeError, match="decoder broke"):
        poisoned.result(timeout=5)
    assert batcher.submit(np.full(8000, 0.3, np.float32)).result(timeout=5).transcript == "words"
    batcher.close()
    assert batcher.utterances == 3 and batcher.failures == 1


def test_text_encoder(bundle):
    text = TextEncoder(bundle, provider="cpu")
    sentences = ["I want to buy it.", "買いたいです。", "I am indifferent.", "word " * 500]
    together = text.embed(sentences)
    alone = np.stack([text.embed([s])[0] for s in sentences])
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.abs(together - alone).max() < 1e-4
    assert text.texts_embedded == 8


def _quantised(tiny_bundle, folder, quantise, precision: str):
    """The tiny bundle with its audio encoder quantised by `quantise(src, dst)`: its
    encoder, one embedding per utterance alone, and the daemon's batch size for it."""
    from daemon.config import parse_config
    from daemon.service import batcher_options

    folder = copy_bundle(tiny_bundle, folder)
    quantise(tiny_bundle / "audio_encoder.onnx", folder / "audio_encoder.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["audio_encoder"]["precision"] = precision
    write_manifest(folder, manifest)
    enc = AudioEncoder(load_bundle(folder), options=EncoderOptions(provider="cpu", max_batch=8))
    utterances = [noise(s, i) * a for i, (s, a) in enumerate(((1.0, 1), (2.0, 5), (0.6, 0.2), (1.5, 3)))]
    single = np.stack([enc.embed([u])[0] for u in utterances])
    assert np.abs(enc.embed(utterances) - single).max() < 1e-4  # batch mates leave each embedding be
    return enc, utterances, single, batcher_options(parse_config("[encoder]\nmax_batch = 8\n"), enc).max_batch


def test_int8_bundle_keeps_batch_invariance(tiny_bundle, tmp_path):
    from daemon.config import parse_config
    from daemon.service import batcher_options
    from trainer.export import quantize_int8

    *_, batch = _quantised(tiny_bundle, tmp_path / "int8", quantize_int8, "int8")
    # ... because the daemon runs dynamic int8 one utterance at a time: one activation
    # scale over a batch would let batch mates move each other.
    assert batch == 1
    fp32 = AudioEncoder(load_bundle(tiny_bundle), options=EncoderOptions(provider="cpu", max_batch=8))
    assert batcher_options(parse_config("[encoder]\nmax_batch = 8\n"), fp32).max_batch == 8


def test_8_bit_weight_bundle_batches_and_does_not_depend_on_batch_mates(tiny_bundle, tmp_path):
    from trainer.export import quantize_weights_int8

    _, utterances, single, batch = _quantised(tiny_bundle, tmp_path / "int8w", quantize_weights_int8, "int8-weights")
    # Activations are quantised row by row, so batches are as safe as fp32's.
    assert batch == 8
    fp32 = AudioEncoder(load_bundle(tiny_bundle), options=EncoderOptions(provider="cpu", max_batch=8))
    assert np.min(np.sum(fp32.embed(utterances) * single, axis=1)) > 0.99
