"""Triton model repositories for a bundle's audio encoder (`emoclapd triton-repository`).

The repository serves the bundle's own `audio_encoder.onnx` with the onnxruntime
backend of NVIDIA's Triton images. Triton's dynamic batcher merges only requests
whose inputs have equal shapes; the client sends each batch zero-padded to its
longest utterance together with the true lengths, and the model pools over the
lengths only, so whatever Triton merges, an utterance's embedding is the one the
in-process encoder computes. Ragged batching would need a model that takes one flat
tensor plus Triton's batch inputs, which the bundle's model is not.

Importable without the `triton` extra (the PyTriton host shares the options and the
signature); writing `config.pbtxt` needs tritonclient's `model_config_pb2`.
"""
from __future__ import annotations

import functools
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

MODEL_NAME = "emoclap_audio"
# Keys of the model configuration's `parameters`, read back by the client: a repository
# built from another bundle is refused at start-up.
BUNDLE_HASH_KEY = "emoclap_bundle_hash"
AUDIO_SHA_KEY = "emoclap_audio_sha256"
INFO_FILE = "emoclap-bundle.json"
KINDS = ("KIND_GPU", "KIND_CPU")
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
MAX_BATCH_LIMIT = 4096
MAX_QUEUE_DELAY_US = 10_000_000  # a request waiting 10 s for company is a misconfiguration
MAX_INSTANCES = 256
# ONNX tensor element types → Triton data types (the ones an encoder can have).
ONNX_TO_TRITON = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(double)": "FP64",
                  "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(bool)": "BOOL"}


class RepositoryError(ValueError):
    """A repository that cannot be written as asked; the message names the option or file."""


def parse_sizes(text: str, option: str = "--preferred") -> tuple[int, ...]:
    """'4,8,16' → (4, 8, 16); '' → () (no preferred sizes)."""
    text = text.strip()
    if not text:
        return ()
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"[0-9]{1,9}", part):
            raise RepositoryError(f"{option}: expected comma-separated whole numbers, got {part!r}")
        sizes.append(int(part))
    return tuple(sizes)


@dataclass(frozen=True)
class RepositoryOptions:
    max_batch: int = 32              # rows Triton runs at once (max_batch_size)
    preferred: tuple[int, ...] = (4, 8, 16)
    queue_delay_us: int = 2000       # how long a request waits for others to batch with
    instances: int = 1               # model instances (per GPU with KIND_GPU)
    kind: str = "KIND_GPU"
    model: str = MODEL_NAME

    def __post_init__(self):
        def whole(name, value, low, high):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise RepositoryError(f"--{name}: expected a whole number from {low} to {high}, got {value!r:.60}")
        whole("max-batch", self.max_batch, 1, MAX_BATCH_LIMIT)
        whole("queue-delay-us", self.queue_delay_us, 0, MAX_QUEUE_DELAY_US)
        whole("instances", self.instances, 1, MAX_INSTANCES)
        for size in self.preferred:
            whole("preferred", size, 1, self.max_batch)
        if list(self.preferred) != sorted(set(self.preferred)):
            raise RepositoryError("--preferred: sizes must be increasing without repeats, "
                                  f"got {list(self.preferred)}")
        if self.kind not in KINDS:
            raise RepositoryError(f"--kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.model, str) or not NAME_RE.fullmatch(self.model):
            raise RepositoryError(f"--model: a model name is 1 to 128 letters, digits, '_', '.' or '-' "
                                  f"and does not start with '.' or '-', got {self.model!r:.140}")


@dataclass(frozen=True)
class Tensor:
    """One model input or output as Triton sees it: dims without the batch dimension.
    A tensor that is only [batch] in the model is [1] for Triton, reshaped to []."""
    name: str
    dtype: str
    dims: tuple[int, ...]
    reshaped: bool = False

    def triton_shape(self) -> list[int]:
        """The shape Triton's metadata reports (batch first, -1)."""
        return [-1, *self.dims]


def _tensor(info, where: str) -> Tensor:
    dtype = ONNX_TO_TRITON.get(info.type)
    if dtype is None:
        raise RepositoryError(f"{where}: {info.name!r} has type {info.type}, which this repository does not map")
    shape = list(info.shape)
    if not shape or isinstance(shape[0], int):
        raise RepositoryError(f"{where}: {info.name!r} has shape {shape}; a batched model's first "
                              "dimension must be a symbolic batch size")
    dims = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape[1:])
    return Tensor(info.name, dtype, dims or (1,), reshaped=not dims)


def model_signature(onnx_path: Path) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of an ONNX model as a batched Triton model declares them, read
    from the model itself."""
    try:
        stat = Path(onnx_path).stat()
    except OSError as exc:
        raise RepositoryError(f"{onnx_path}: cannot read model: {exc.strerror}") from None
    inputs, outputs = _signature(str(onnx_path), stat.st_mtime_ns, stat.st_size)
    return list(inputs), list(outputs)


@functools.lru_cache(maxsize=8)  # a session per call costs more than the check it serves
def _signature(onnx_path: str, _mtime_ns: int, _size: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise RepositoryError(f"{onnx_path}: cannot load model: {exc}") from None
    return (tuple(_tensor(i, onnx_path) for i in session.get_inputs()),
            tuple(_tensor(o, onnx_path) for o in session.get_outputs()))


def model_config(bundle, options: RepositoryOptions):
    """The `ModelConfig` message for Triton's onnxruntime backend."""
    from tritonclient.grpc import model_config_pb2 as mc

    inputs, outputs = model_signature(bundle.audio_encoder)
    config = mc.ModelConfig(name=options.model, platform="onnxruntime_onnx", backend="onnxruntime",
                            max_batch_size=options.max_batch, default_model_filename="model.onnx")

    def add(target, tensor: Tensor):
        entry = target.add(name=tensor.name, data_type=getattr(mc, "TYPE_" + tensor.dtype), dims=tensor.dims)
        if tensor.reshaped:
            entry.reshape.SetInParent()  # shape [] : Triton's [batch, 1] is the model's [batch]
    for tensor in inputs:
        add(config.input, tensor)
    for tensor in outputs:
        add(config.output, tensor)
    if not bundle.single_row_only:
        config.dynamic_batching.preferred_batch_size.extend(options.preferred)
        config.dynamic_batching.max_queue_delay_microseconds = options.queue_delay_us
    config.instance_group.add(count=options.instances, kind=getattr(mc.ModelInstanceGroup, options.kind))
    config.parameters[BUNDLE_HASH_KEY].string_value = bundle.hash
    config.parameters[AUDIO_SHA_KEY].string_value = bundle.manifest["files"][bundle.audio_encoder.name]
    return config


def config_text(bundle, options: RepositoryOptions) -> str:
    from google.protobuf import text_format

    # One comment line: a newline in a folder name or description must not end it.
    about = " ".join(f"{bundle.folder.name} ({bundle.description or 'no description'})".split())[:300]
    return (f"# emoclapd triton-repository: the audio encoder of {about}\n"
            + text_format.MessageToString(model_config(bundle, options)))


def write_repository(bundle, out: str | Path, options: RepositoryOptions | None = None) -> Path:
    """OUT/<model>/config.pbtxt, OUT/<model>/1/model.onnx and OUT/<model>/emoclap-bundle.json;
    refuses to overwrite an existing model folder."""
    options = options or RepositoryOptions()
    folder = Path(out) / options.model
    if bundle.piece_samples:
        raise RepositoryError(f"{bundle.folder}: a bundle encoded in pieces has two audio graphs and runs "
                              "in ONNX Runtime only; Triton serves whole-utterance bundles")
    if folder.exists():
        raise RepositoryError(f"{folder}: already exists; remove it or choose another output folder")
    text = config_text(bundle, options)
    staging = Path(out) / f".{options.model}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        (staging / "1").mkdir(parents=True)
        shutil.copyfile(bundle.audio_encoder, staging / "1" / "model.onnx")
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        info = {"bundle": str(bundle.folder), BUNDLE_HASH_KEY: bundle.hash,
                AUDIO_SHA_KEY: bundle.manifest["files"][bundle.audio_encoder.name],
                "description": bundle.description, "embedding_dim": bundle.embedding_dim,
                "sample_rate": bundle.sample_rate, "precision": bundle.precision}
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        staging.rename(folder)  # a half-written repository never looks complete
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise RepositoryError(f"{folder}: cannot write the repository: {exc}") from None
    return folder
