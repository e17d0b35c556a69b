"""The audio encoder that `[encoder] backend` names: this process's ONNX Runtime
(daemon.encoder) or a Triton server (daemon.triton). Chosen here, above both, so that
neither imports the other's caller."""
from __future__ import annotations

from emoclap.bundle import Bundle

from .encoder import AudioEncoder, encoder_options
from .triton import TritonAudioEncoder, triton_options


def audio_encoder(cfg, bundle: Bundle, provider: str | None = None) -> AudioEncoder | TritonAudioEncoder:
    if cfg.encoder.backend == "triton":
        return TritonAudioEncoder(bundle, triton_options(cfg), encoder_options(cfg, provider))
    return AudioEncoder(bundle, options=encoder_options(cfg, provider))
