"""Pooled statistics count only an utterance's own frames; the learned layer mix is a
convex combination of layer-normalised statistics; mean of the last layer is plain
masked mean pooling."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from trainer.masks import masked_mean
from trainer.pooling import AudioPooling, masked_stats


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=5), st.integers(0, 2**31 - 1))
def test_statistics_are_those_of_the_valid_frames_whatever_the_padding_holds(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths) + 3
    x = torch.randn(len(lengths), width, 4, generator=g) * 3
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    junk = x.clone()
    junk[~mask] = 1e4  # padding full of junk changes nothing
    stats = masked_stats(junk, mask, std=True)
    for i, n in enumerate(lengths):
        frames = x[i, :n].double().numpy()
        np.testing.assert_allclose(stats[i, :4].numpy(), frames.mean(0), atol=1e-4)
        np.testing.assert_allclose(stats[i, 4:].numpy(), np.sqrt(frames.var(0) + 1e-6), atol=1e-3)


def test_last_layer_mean_is_masked_mean_pooling_and_learns_nothing():
    pool = AudioPooling(hidden=4, depth=3, layers="last", pooling="mean")
    states = [torch.randn(2, 5, 4) for _ in range(3)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    stats = pool.statistics(states, mask)
    assert stats.shape == (2, 1, 4) and not list(pool.parameters())
    assert torch.allclose(pool(stats), masked_mean(states[-1], mask))


def test_every_layer_mixed_by_softmax_weights_of_normalised_statistics():
    pool = AudioPooling(hidden=4, depth=3, layers="all", pooling="stats")
    states = [torch.randn(2, 5, 4) * (10 ** k) for k in range(3)]  # scales grow with depth
    mask = torch.ones(2, 5, dtype=torch.bool)
    stats = pool.statistics(states, mask)
    assert stats.shape == (2, 3, 8) and pool.width == 8
    with torch.no_grad():
        pool.mix.copy_(torch.tensor([0.0, 50.0, 0.0]))  # all weight on the middle layer
    middle = torch.nn.functional.layer_norm(stats[:, 1].unflatten(-1, (2, 4)), (4,)).flatten(-2)
    assert torch.allclose(pool(stats), middle, atol=1e-5)
    assert sum(pool.layer_weights()) == pytest.approx(1.0)


def test_unknown_choices_are_refused():
    with pytest.raises(ValueError, match="pooling"):
        AudioPooling(4, 3, "all", "max")
