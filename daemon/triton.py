"""NVIDIA Triton Inference Server as the audio encoder's engine (`[encoder] backend = "triton"`).

The utterances go through the in-process encoder's own steps (minimum length, chunks
of long utterances averaged, batches of similar length zero-padded to their longest
with the true lengths); only the model call is a gRPC request to Triton, which runs
the bundle's audio model from a repository written by `emoclapd triton-repository`
(or `daemon.triton_host`). Triton's dynamic batcher merges concurrent requests of
equal shapes, from this gateway and others; the model pools over each row's own
length, so an utterance's embedding does not depend on what it is batched with.

A failed request fails that batch (the encode stage drops its utterances as
`encoder_error`); a server that cannot be reached is logged once, reported by
`problem()` (for /healthz), and used again as soon as it answers.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from emoclap.bundle import Bundle
from .config import ConfigError, EncoderConfig, check_triton_settings
from .encoder import AudioEncoder, EncoderError, EncoderOptions
from .triton_repository import BUNDLE_HASH_KEY, MODEL_NAME, model_signature

log = logging.getLogger("emoclapd.triton")

# gRPC's reconnect backoff grows to two minutes by default: a restarted server would go
# unused that long. Messages: a batch of 10-s utterances is megabytes.
CHANNEL_ARGS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
                ("grpc.initial_reconnect_backoff_ms", 250), ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 2000)]
# Status codes that mean "the server or the model is not there", not "this batch is bad".
UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_FOUND", "CANCELLED")


@dataclass(frozen=True)
class TritonOptions:
    url: str = "127.0.0.1:8001"
    model: str = MODEL_NAME
    timeout_s: float = 10.0  # one request, and each start-up check

    def __post_init__(self):
        try:  # the configuration's own checks, so a library caller gets the same messages
            check_triton_settings(EncoderConfig(backend="triton", triton_url=self.url,
                                                triton_model=self.model, triton_timeout_s=self.timeout_s))
        except (ConfigError, TypeError) as exc:
            raise ValueError(str(exc)) from None


def triton_options(cfg) -> TritonOptions:
    enc = cfg.encoder
    return TritonOptions(url=enc.triton_url, model=enc.triton_model, timeout_s=enc.triton_timeout_s)


class TritonBatchError(RuntimeError):
    """Triton did not embed one batch. `reported`: the cause was logged already (a server
    that is down), so whoever catches it need not log it again."""

    def __init__(self, message: str, reported: bool = False):
        super().__init__(message)
        self.reported = reported


class TritonAudioEncoder(AudioEncoder):
    """`AudioEncoder` whose model runs in Triton; same inputs, same embeddings."""

    def __init__(self, bundle: Bundle, triton: TritonOptions | None = None,
                 options: EncoderOptions | None = None):
        if bundle.piece_samples:
            raise EncoderError(f"{bundle.folder}: a bundle encoded in pieces runs in ONNX Runtime only "
                               "(encoder.backend = \"onnxruntime\"); Triton serves whole-utterance bundles")
        self.triton = triton or TritonOptions()
        self.available = True  # False from a failed request that found no server until one succeeds
        self.down_since: float | None = None
        self.failed_batches = 0
        self._state = threading.Lock()
        super().__init__(bundle, options=options)
        if self.server_max_batch < self.rows_per_call:
            log.info("Triton's max_batch_size %d caps requests (encoder.max_batch %d)",
                     self.server_max_batch, self.rows_per_call)
            self.rows_per_call = self.server_max_batch

    # ---- start-up: the server is live, the model ready and built from this bundle
    def _open(self) -> None:
        try:
            import tritonclient.grpc as grpcclient
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise EncoderError('encoder.backend = "triton" needs tritonclient: install the triton extra '
                               "(pip install 'emoclap[triton]')") from None
        self._grpc, self._server_error = grpcclient, InferenceServerException
        url, model, timeout = self.triton.url, self.triton.model, self.triton.timeout_s
        where = f"Triton at {url}"
        self.client = grpcclient.InferenceServerClient(url, channel_args=CHANNEL_ARGS)
        try:
            if not self.client.is_server_live(client_timeout=timeout):
                raise EncoderError(f"{where} is not live")
            if not self.client.is_model_ready(model, client_timeout=timeout):
                raise EncoderError(f"{where}: model {model!r} is not ready (is it in the server's "
                                   "model repository? the server's log says why not)")
            meta = self.client.get_model_metadata(model, as_json=True, client_timeout=timeout)
            config = self.client.get_model_config(model, as_json=True, client_timeout=timeout)
        except InferenceServerException as exc:
            raise EncoderError(f"{where} (encoder.triton_url): {_describe(exc)}") from None
        self.server_max_batch = check_model(self.bundle, meta, config.get("config", {}),
                                            f"{where}: model {model!r}")
        self.provider = f"triton {model}@{url}"
        log.info("audio encoder on %s (%s)", self.provider, self.bundle.audio_encoder.name)

    # ---- one padded batch
    def _infer(self, wave: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        g = self._grpc
        rows = len(lengths)
        inputs = [g.InferInput("waveform", list(wave.shape), "FP32"), g.InferInput("lengths", [rows, 1], "INT64")]
        inputs[0].set_data_from_numpy(np.ascontiguousarray(wave, np.float32))
        inputs[1].set_data_from_numpy(np.asarray(lengths, np.int64).reshape(rows, 1))
        try:
            result = self.client.infer(self.triton.model, inputs, outputs=[g.InferRequestedOutput("embedding")],
                                       client_timeout=self.triton.timeout_s)
            emb = result.as_numpy("embedding")
        except self._server_error as exc:
            raise self._failed(exc) from None
        dim = self.bundle.embedding_dim
        if emb is None or emb.shape != (rows, dim) or not np.isfinite(emb).all():
            with self._state:
                self.failed_batches += 1
            shape = None if emb is None else emb.shape
            raise TritonBatchError(f"Triton answered embedding of shape {shape} (expected {(rows, dim)}) "
                                   "or with non-finite values")
        self._answered()
        return emb.astype(np.float32, copy=False)

    def _failed(self, exc) -> TritonBatchError:
        status = str(exc.status() or "").rsplit(".", 1)[-1]
        with self._state:
            self.failed_batches += 1
            went = status in UNREACHABLE and self.available
            if went:
                self.available, self.down_since = False, time.monotonic()
            reported = not self.available
        if went:
            log.error("Triton at %s cannot embed (%s); utterances are dropped as encoder_error "
                      "until it answers again", self.triton.url, _describe(exc))
        return TritonBatchError(f"Triton at {self.triton.url}: {_describe(exc)}", reported=reported)

    def _answered(self) -> None:
        with self._state:
            back = not self.available
            down_for = time.monotonic() - (self.down_since or time.monotonic())
            self.available, self.down_since = True, None
        if back:
            log.warning("Triton at %s answers again (after %.0f s)", self.triton.url, down_for)

    def problem(self) -> str | None:
        """What /healthz should say while Triton cannot be reached, else None."""
        with self._state:
            since = self.down_since
        if since is None:
            return None
        return f"encoder: Triton at {self.triton.url} unreachable for {time.monotonic() - since:.0f} s"

    def close(self) -> None:
        self.client.close()


def _describe(exc) -> str:
    status = str(exc.status() or "").rsplit(".", 1)[-1]
    message = " ".join(str(exc.message() or "").split())[:300]
    return f"{status}: {message}" if status else message


def _shape(values) -> list[int]:
    return [int(v) for v in values]


def check_model(bundle: Bundle, meta: dict, config: dict, where: str) -> int:
    """The served model's signature against the bundle's audio model, and the bundle it
    was built from; returns its max_batch_size."""
    try:
        max_batch = int(config.get("max_batch_size", 0))
        served_in = {t["name"]: (t["datatype"], _shape(t["shape"])) for t in meta.get("inputs", [])}
        served_out = {t["name"]: (t["datatype"], _shape(t["shape"])) for t in meta.get("outputs", [])}
        built_from = config.get("parameters", {}).get(BUNDLE_HASH_KEY, {}).get("string_value")
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
        raise EncoderError(f"{where}: unreadable metadata ({exc!r:.200})") from None
    if max_batch < 1:
        raise EncoderError(f"{where}: max_batch_size is {max_batch}; the encoder needs a batched model "
                           "(write the repository with emoclapd triton-repository)")
    inputs, outputs = model_signature(bundle.audio_encoder)
    for kind, tensors, served in (("input", inputs, served_in), ("output", outputs, served_out)):
        wanted = {t.name: (t.dtype, t.triton_shape()) for t in tensors}
        if kind == "output":  # other outputs may be served; the encoder reads `embedding`
            served = {k: v for k, v in served.items() if k in wanted}
        if set(served) != set(wanted):
            raise EncoderError(f"{where}: {kind}s are {sorted(served)}, the bundle's audio model has "
                               f"{sorted(wanted)}")
        for name, (dtype, shape) in wanted.items():
            got_dtype, got_shape = served[name]
            fits = len(got_shape) == len(shape) and all(w == -1 or w == g for w, g in zip(shape, got_shape))
            if got_dtype != dtype or not fits:
                raise EncoderError(f"{where}: {kind} {name!r} is {got_dtype} {got_shape}, the bundle's "
                                   f"audio model needs {dtype} {shape}")
    if not isinstance(built_from, str):
        raise EncoderError(f"{where}: its configuration has no {BUNDLE_HASH_KEY} parameter, so it "
                           "cannot be checked against the bundle; write the repository with "
                           "emoclapd triton-repository")
    if built_from != bundle.hash:
        raise EncoderError(f"{where}: built from another bundle ({BUNDLE_HASH_KEY} {built_from[:12]}…, "
                           f"this bundle {bundle.hash[:12]}…); write the repository again from "
                           f"{bundle.folder}")
    return max_batch
