"""A Triton server for the bundle's audio encoder without Docker or a GPU (PyTriton).

    .venv-triton/bin/python -m daemon.triton_host BUNDLE [--grpc-port 8001] ...

PyTriton's wheel bundles the `tritonserver` binary with its Python backend; the model
it serves here is the bundle's ONNX session under ONNX Runtime, behind Triton's
dynamic batcher, answering the same gRPC requests as a repository written by
`emoclapd triton-repository` does in NVIDIA's images. Run it from a virtual
environment of Debian's own Python 3.11 (`./bootstrap test` makes `.venv-triton`):
PyTriton's backend stub does not start under other builds of Python. It needs
numpy, onnxruntime and nvidia-pytriton only, not the daemon's dependencies.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

if __package__ in (None, ""):  # run by path: the repository root holds the packages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.triton_repository import (AUDIO_SHA_KEY, BUNDLE_HASH_KEY, MODEL_NAME,  # noqa: E402
                                      RepositoryError, RepositoryOptions, model_signature,
                                      parse_sizes)
from emoclap.bundle import BundleError, load_bundle  # noqa: E402

log = logging.getLogger("emoclap.triton_host")


class Host:
    """One ONNX Runtime session; Triton hands it lists of requests, which it runs grouped
    by shape (requests the dynamic batcher put together share one, but nothing here
    relies on that)."""

    def __init__(self, bundle, threads: int = 0):
        import numpy as np
        import onnxruntime as ort

        self.np = np
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(bundle.audio_encoder), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        inputs, outputs = model_signature(bundle.audio_encoder)
        self.inputs, self.outputs = inputs, outputs
        self.output_names = [o.name for o in outputs]
        self.batches = 0

    def _feed(self, request: dict) -> dict:
        # Triton's [batch, 1] is the model's [batch] for an input the repository reshapes.
        return {t.name: (request[t.name].reshape(-1) if t.reshaped else request[t.name]) for t in self.inputs}

    def __call__(self, requests: list) -> list[dict]:
        np = self.np
        groups: dict[tuple, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(tuple(request[t.name].shape[1:] for t in self.inputs), []).append(i)
        responses: list[dict | None] = [None] * len(requests)
        for members in groups.values():
            feeds = [self._feed(requests[i]) for i in members]
            joined = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
            result = self.session.run(self.output_names, joined)
            self.batches += 1
            start = 0
            for i, feed in zip(members, feeds):
                rows = len(next(iter(feed.values())))
                responses[i] = {name: out[start:start + rows] for name, out in zip(self.output_names, result)}
                start += rows
        return responses


def serve(bundle_path: str, options: RepositoryOptions, host: str, grpc_port: int, http_port: int,
          metrics_port: int, threads: int, stop: threading.Event, ready=None) -> None:
    bundle = load_bundle(bundle_path)  # a bad bundle is reported before PyTriton is needed
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    dtypes = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "INT64": np.int64,
              "INT32": np.int32, "BOOL": np.bool_}
    instances = [Host(bundle, threads) for _ in range(options.instances)]
    spec = instances[0]
    single = bundle.single_row_only
    config = ModelConfig(max_batch_size=1 if single else options.max_batch,
                         batcher=DynamicBatcher(max_queue_delay_microseconds=options.queue_delay_us,
                                                preferred_batch_size=list(options.preferred) or None))
    triton_config = TritonConfig(grpc_address=host, grpc_port=grpc_port, http_address=host,
                                 http_port=http_port, metrics_address=host, metrics_port=metrics_port,
                                 exit_on_error=True)
    # Not the context manager: it starts the server, and a model bound to a running
    # server has its configuration written before the parameters below are added.
    triton = Triton(config=triton_config)
    try:
        triton.bind(model_name=options.model, infer_func=instances,
                    inputs=[Tensor(name=t.name, dtype=dtypes[t.dtype], shape=t.dims) for t in spec.inputs],
                    outputs=[Tensor(name=t.name, dtype=dtypes[t.dtype], shape=t.dims) for t in spec.outputs],
                    config=config, strict=True)
        # The client refuses a model built from another bundle; PyTriton has no public way
        # to add configuration parameters, so they join the backend's own (pinned 0.7.0).
        for model in triton._model_manager.models:
            params = model._get_triton_model_config().backend_parameters
            params[BUNDLE_HASH_KEY] = bundle.hash
            params[AUDIO_SHA_KEY] = bundle.manifest["files"][bundle.audio_encoder.name]
        triton.run()
        log.info("serving %s (%s) as %r on %s: gRPC %d, HTTP %d, metrics %d", bundle.folder,
                 bundle.hash[:12], options.model, host, grpc_port, http_port, metrics_port)
        if ready is not None:
            ready()
        while not stop.wait(0.5):
            if not triton.is_alive():
                raise RuntimeError("the Triton server stopped")
    finally:
        triton.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="triton_host", description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="model bundle folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics")
    p.add_argument("--model", default=MODEL_NAME, help="model name (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--preferred", default="4,8,16", help="preferred batch sizes (default: %(default)s)")
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--instances", type=int, default=1, help="ONNX Runtime sessions serving requests")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads per session")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        options = RepositoryOptions(max_batch=args.max_batch, preferred=parse_sizes(args.preferred),
                                    queue_delay_us=args.queue_delay_us, instances=args.instances,
                                    kind="KIND_CPU", model=args.model)
        for name in ("grpc_port", "http_port", "metrics_port"):
            if not 1 <= getattr(args, name) <= 65535:
                raise RepositoryError(f"--{name.replace('_', '-')}: expected 1 to 65535")
        if args.threads < 0:
            raise RepositoryError("--threads: must be 0 or more")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        serve(args.bundle, options, args.host, args.grpc_port, args.http_port, args.metrics_port,
              args.threads, stop, ready=lambda: print("ready", flush=True))
    except (RepositoryError, BundleError) as exc:
        print(f"triton_host: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"triton_host: {exc}: run it with the Python of .venv-triton (./bootstrap test makes it; "
              "see README, Triton Inference Server)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
