"""Encoding an utterance in pieces (emoclap.pieces): where it is cut, how the pieces'
moments merge, and that the result does not depend on which pieces came early."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emoclap import pieces

FRAME = 320  # samples an encoder frame covers, as Whisper's


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 200_000), size=st.integers(160, 40_000), least=st.integers(1, 2_000))
def test_pieces_tile_the_utterance_from_its_start(n, size, least):
    cut = pieces.bounds(n, size, least)
    assert cut[0][0] == 0
    for (_, end), (start, _) in zip(cut, cut[1:]):
        assert end == start  # contiguous, no overlap
    assert all(e - s == size for s, e in cut[:-1])  # every piece but the last is whole
    assert 0 < cut[-1][1] - cut[-1][0] <= size
    left_out = n - cut[-1][1]
    assert 0 <= left_out < max(1, least)  # only a rest too short for a frame is left out
    # What is cut while the utterance is spoken never changes once more audio comes.
    longer = set(pieces.bounds(n + size, size, least))
    assert all(c in longer for c in cut if c[1] - c[0] == size)


def test_bounds_refuse_a_piece_of_nothing():
    with pytest.raises(ValueError, match="piece_samples"):
        pieces.bounds(100, 0)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 60), min_size=1, max_size=8), seed=st.integers(0, 2**16),
       scale=st.floats(0.01, 1000.0))
def test_merged_moments_are_those_of_all_the_frames(sizes, seed, scale):
    rng = np.random.default_rng(seed)
    frames = [rng.normal(scale, scale, size=(n, 3, 5)) for n in sizes]  # [T, L, H], far from zero mean
    counts = np.array(sizes, np.float64)
    means = np.stack([f.mean(0) for f in frames])
    variances = np.stack([f.var(0) for f in frames])
    mean, variance = pieces.merge(counts, means, variances)
    every = np.concatenate(frames)
    np.testing.assert_allclose(mean, every.mean(0), rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(variance, every.var(0), rtol=1e-7, atol=1e-9 * scale * scale)


def toy_run(wave, lengths, offsets):
    """A stand-in piece graph: frames of 320 samples, their mean and energy as features,
    shifted by the frame's position (as a tower with absolute positions is)."""
    b = wave.shape[0]
    t = max(1, -(-wave.shape[1] // FRAME))
    padded = np.zeros((b, t * FRAME), np.float32)
    padded[:, :wave.shape[1]] = wave
    x = padded.reshape(b, t, FRAME)
    pos = (offsets[:, None] // FRAME + np.arange(t)[None, :]) if offsets is not None else np.arange(t)[None, :]
    feats = np.stack([x.mean(-1) + 0.001 * pos, (x ** 2).mean(-1)], -1)[:, :, None, :]  # [b, t, L=1, H=2]
    count = -(-lengths // FRAME)
    valid = np.arange(t)[None, :] < count[:, None]
    m = valid[..., None, None]
    n = np.maximum(count, 1)[:, None, None]
    mean = (feats * m).sum(1) / n
    var = (((feats - mean[:, None]) ** 2) * m).sum(1) / n
    frames = feats[:, :, 0, :] * valid[..., None]
    return count.astype(np.float32), mean.astype(np.float32), var.astype(np.float32), frames.astype(np.float32)


SPEC = pieces.PieceSpec(samples=4 * FRAME, min_samples=FRAME, with_std=True, offsets=True)


def toy_head(stats):
    return stats.reshape(len(stats), -1) / np.linalg.norm(stats.reshape(len(stats), -1), axis=1, keepdims=True)


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(FRAME, 20 * FRAME), min_size=1, max_size=5), seed=st.integers(0, 2**16),
       early=st.lists(st.booleans(), min_size=30, max_size=30), batch=st.integers(1, 8))
def test_an_utterance_embeds_alike_whichever_pieces_came_early(lengths, seed, early, batch):
    rng = np.random.default_rng(seed)
    audios = [rng.normal(0, 0.1, n).astype(np.float32) for n in lengths]
    whole, _ = pieces.encode_utterances(audios, SPEC, toy_run, toy_head, batch)
    known = []
    flags = iter(early * 10)
    for a in audios:
        cut = [(k, s, e) for k, (s, e) in enumerate(pieces.bounds(a.size, SPEC.samples, SPEC.min_samples))
               if e - s == SPEC.samples and next(flags)]
        ahead = pieces.encode_pieces([(a[s:e], s) for _, s, e in cut], SPEC, toy_run, 1)
        known.append({k: m for (k, _, _), m in zip(cut, ahead)})
    again, found = pieces.encode_utterances(audios, SPEC, toy_run, toy_head, batch, known)
    np.testing.assert_allclose(again, whole, rtol=1e-5, atol=1e-6)
    for k, ms in zip(known, found):
        assert all(ms[i] is m for i, m in k.items())  # the early pieces were used, not encoded again


def test_a_piece_of_the_wrong_length_is_encoded_again():
    audio = np.random.default_rng(1).normal(0, 0.1, 9 * FRAME).astype(np.float32)
    whole, _ = pieces.encode_utterances([audio], SPEC, toy_run, toy_head, 4)
    wrong = pieces.encode_pieces([(audio[:3 * FRAME], 0)], SPEC, toy_run, 1)[0]  # another bundle's length
    again, found = pieces.encode_utterances([audio], SPEC, toy_run, toy_head, 4, [{0: wrong}])
    np.testing.assert_allclose(again, whole, rtol=1e-6)
    assert found[0][0] is not wrong


def test_the_shelf_holds_pieces_until_their_utterance_comes_and_no_longer_than_it_can_last():
    shelf = pieces.Shelf(ttl_s=10.0, limit=5)
    shelf.put(("s1", 0.0, 1.5), 0, "a", now=0.0)
    shelf.put(("s1", 0.0, 1.5), 1, "b", now=1.0)
    shelf.put(("s2", 0.0, 3.0), 0, "c", now=2.0)
    assert shelf.take(("s1", 0.0, 1.5)) == {0: "a", 1: "b"} and len(shelf) == 1
    assert shelf.take(("s1", 0.0, 1.5)) == {}
    shelf.put(("s3", 0.0, 1.0), 0, "d", now=13.0)  # s2's utterance never came: expired
    assert shelf.take(("s2", 0.0, 3.0)) == {} and shelf.expired == 1
    for i in range(7):  # bounded: the oldest utterance's pieces go first
        shelf.put(("s4", 0.0, 1.0), i, i, now=14.0)
    assert len(shelf) <= 5
