"""Greedy decoding with rows joining and leaving between steps (emoclap.decoding): driven by
a scripted decoder that checks what it is fed, and by a small real Whisper decoder in
torch, where a row's words must not depend on which rows shared its steps."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emoclap.decoding import Decoding
from emoclap.transcript import DecodingSpec

EOT, VOCAB = 10, 14  # ids above EOT are special, like Whisper's timestamps and task tokens
SPEC = DecodingSpec(prompt=(11, 12), eot=EOT, blank=(0,), max_tokens=8, tokens_per_second=2.0,
                    base_tokens=1, layers=1, heads=1, head_dim=1)


class Scripted:
    """A decoder that says scripts[row][i] as row's i-th token (then EOT), with a special
    token ranked higher still; a row is known by its frames' value. It checks that each
    row is fed its own position and sees exactly its own tokens in the cache."""

    def __init__(self, scripts: dict[int, list[int]], joins: bool = True):
        self.scripts, self.joins, self.fed = scripts, joins, []

    def cross(self, frames):
        k = frames[None, :, None, :, :1]
        return k, k.copy()

    def step(self, feeds):
        tokens, past = feeds["tokens"], feeds["past_k"]
        assert set(feeds) == {"tokens", "frame_mask", "past_k", "past_v", "cross_k", "cross_v",
                              *(("positions", "past_mask") if self.joins else ())}
        rows = feeds["cross_k"][0, :, 0, 0, 0].astype(int)
        if self.joins:
            seen = feeds["past_mask"].sum(axis=1)
            assert (seen == feeds["positions"]).all() and feeds["past_mask"].shape[1] == past.shape[3]
            # the cache holds, in its unmasked columns, exactly this row's own earlier tokens
            for r, row in enumerate(rows):
                mine = past[0, r, 0, feeds["past_mask"][r] > 0, 0]
                assert (mine == row).all()
            at = feeds["positions"]
        else:
            at = np.full(len(rows), past.shape[3])
        self.fed.append(tokens.copy())
        logits = np.zeros((len(rows), VOCAB), np.float32)
        for r, row in enumerate(rows):
            i = at[r] + tokens.shape[1] - len(SPEC.prompt)
            script = self.scripts[row]
            logits[r, script[i] if i < len(script) else EOT] = 5.0
            logits[r, VOCAB - 1] = 9.0  # never emitted: above EOT
        new = np.broadcast_to(rows[None, :, None, None, None].astype(np.float32),
                              (1, len(rows), 1, tokens.shape[1], 1))
        return logits, np.concatenate([past, new], 3), np.concatenate([feeds["past_v"], new], 3)

    def decoding(self) -> Decoding:
        return Decoding(SPEC, self.cross, self.step, joins=self.joins)


def frames(row: int, t: int = 3) -> np.ndarray:
    return np.full((t, 1), float(row), np.float32)


def test_rows_stop_at_their_own_end_and_budget_and_specials_never_appear():
    d = Scripted({0: [3, 4], 1: [5, 6, 7, 8, 9, 1, 2, 3], 2: [2]})
    out = d.decoding().decode([frames(0), frames(1), frames(2)], [8, 3, 8])
    assert out == [[3, 4], [5, 6, 7], [2]]
    assert d.fed[0].tolist() == [[11, 12]] * 3  # the prompt first, then one token a row
    assert [f.shape[0] for f in d.fed[1:]] == [3, 2]  # a row that is done leaves the batch


def test_the_first_token_is_never_blank_or_the_end():
    d = Scripted({0: [EOT, 3], 1: [0, 4]})
    out = d.decoding().decode([frames(0), frames(1)], [4, 4])
    assert all(row and row[0] not in (EOT, 0) for row in out)


def test_a_loop_is_cut_to_its_first_copy():
    d = Scripted({0: [1, 2, 3, 1, 2, 3, 1, 2, 3, 4]})
    spec = DecodingSpec(**{**SPEC.__dict__, "max_tokens": 40})
    assert Decoding(spec, d.cross, d.step).decode([frames(0)], [40]) == [[1, 2, 3]]


SCRIPTS = st.lists(st.integers(0, EOT - 1), min_size=0, max_size=10)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(SCRIPTS, st.integers(0, 6), st.integers(1, 8), st.integers(1, 5)),
                min_size=1, max_size=8))
def test_a_row_reads_the_same_whenever_it_joins(rows):
    """Rows (script, join step, budget, frames) admitted at any steps, several at a time:
    each gets what it gets decoded alone, and the batch holds only rows still decoding."""
    scripts = {r: s for r, (s, *_) in enumerate(rows)}
    alone = {r: Scripted(scripts).decoding().decode([frames(r, t)], [b])[0]
             for r, (_, _, b, t) in enumerate(rows)}
    d = Scripted(scripts)
    live = d.decoding()
    got: dict = {}
    for step in range(max(j for _, j, _, _ in rows) + 1):
        joining = [r for r, (_, j, _, _) in enumerate(rows) if j == step]
        got.update(live.admit(joining, [frames(r, rows[r][3]) for r in joining], [rows[r][2] for r in joining]))
        got.update(live.step())
        assert len(live) == len(rows) - len(got) - sum(j > step for _, j, _, _ in rows)
    while len(live):
        got.update(live.step())
    assert got == alone


def test_an_older_step_graph_takes_rows_only_into_an_empty_batch():
    d = Scripted({0: [1, 2, 3], 1: [4, 5]}, joins=False)
    live = d.decoding()
    assert live.admit([0], [frames(0)], [8]) == [] and not live.can_admit
    with pytest.raises(RuntimeError, match="running batch"):
        live.admit([1], [frames(1)], [8])
    done = {}
    while len(live):
        done.update(live.step())
    assert done == {0: [1, 2, 3]} and live.can_admit
    assert live.decode([frames(1)], [8]) == [[4, 5]]


def test_a_failed_step_can_be_dropped_and_decoding_goes_on():
    d = Scripted({0: [1, 2, 3], 1: [4, 5]})
    broken = {"now": False}

    def step(feeds):
        if broken["now"]:
            raise RuntimeError("broken")
        return d.step(feeds)
    live = Decoding(SPEC, d.cross, step)
    live.admit([0], [frames(0)], [8])
    broken["now"] = True
    with pytest.raises(RuntimeError, match="broken"):
        live.step()
    assert live.drop() == [0] and len(live) == 0
    broken["now"] = False
    assert live.decode([frames(1)], [8]) == [[4, 5]]


# A small real decoder: positions, masks and the cache's layout are what this checks.
@pytest.fixture(scope="module")
def whisper_step():
    import torch
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperDecoder

    from trainer.transcriber import StepGraph

    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=40, d_model=16, decoder_layers=2, decoder_attention_heads=2,
                        decoder_ffn_dim=32, max_target_positions=64, max_source_positions=64, pad_token_id=0,
                        bos_token_id=35, eos_token_id=35, decoder_start_token_id=36, init_std=0.5)
    step = StepGraph(WhisperDecoder(cfg).eval()).eval()
    with torch.no_grad():  # positions that weigh: rows say long, different things at each step
        step.decoder.embed_positions.weight.normal_(0, 2.0)
    return step


WHISPER_SPEC = DecodingSpec(prompt=(36, 37, 38), eot=35, blank=(0,), max_tokens=12, tokens_per_second=6.0,
                            base_tokens=6, layers=2, heads=2, head_dim=8)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(2, 9)), min_size=2, max_size=5), st.integers(0, 2**16))
def test_a_whisper_decoder_reads_each_utterance_alone_or_joining_others(whisper_step, rows, seed):
    from trainer.transcriber import torch_decoding

    rng = np.random.default_rng(seed)
    clips = [rng.normal(0, 1, (t, 16)).astype(np.float32) for _, t in rows]
    budgets = [WHISPER_SPEC.max_tokens] * len(rows)
    alone = [torch_decoding(whisper_step, WHISPER_SPEC).decode([c], [b])[0] for c, b in zip(clips, budgets)]
    live, got = torch_decoding(whisper_step, WHISPER_SPEC), {}
    for step in range(max(j for j, _ in rows) + 1):
        joining = [r for r, (j, _) in enumerate(rows) if j == step]
        got.update(live.admit(joining, [clips[r] for r in joining], [budgets[r] for r in joining]))
        got.update(live.step())
    while len(live):
        got.update(live.step())
    assert [got[r] for r in range(len(rows))] == alone
