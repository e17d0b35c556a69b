import math

import pytest
import torch
import torch.nn.functional as F

from trainer.loss import contrastive_loss, multitask_loss


def slow_loss(audio, text, labels, scale, kind):
    """The definition written out element by element."""
    idx = [i for i, y in enumerate(labels.tolist()) if y >= 0]
    n = len(idx)
    if n == 0:
        return 0.0
    sim = [[scale * float(audio[i] @ text[j]) for j in idx] for i in idx]
    lab = [int(labels[i]) for i in idx]

    def target_row(r):
        same = [1.0 if lab[r] == lab[c] else 0.0 for c in range(n)]
        if kind == "ce":
            return [s / sum(same) for s in same]
        z = sum(math.exp(s) for s in same)
        return [math.exp(s) / z for s in same]

    total = 0.0
    for direction in (0, 1):
        acc = 0.0
        for r in range(n):
            row = [sim[r][c] if direction == 0 else sim[c][r] for c in range(n)]
            lse = math.log(sum(math.exp(v) for v in row))
            tgt = target_row(r)
            for c in range(n):
                logp = row[c] - lse
                if kind == "ce":
                    acc -= tgt[c] * logp
                elif tgt[c] > 0:
                    acc += tgt[c] * (math.log(tgt[c]) - logp)
        total += acc / n
    return total / 2


@pytest.mark.parametrize("kind", ["ce", "kl"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_explicit_loop(kind, seed):
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(9, 8, generator=g, dtype=torch.float64), dim=1)
    t = F.normalize(torch.randn(9, 8, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(-1, 2, (9,), generator=g)
    got = contrastive_loss(a, t, y, 7.5, kind).item()
    assert got == pytest.approx(slow_loss(a, t, y, 7.5, kind), rel=1e-9, abs=1e-12)


def test_perfect_separation_costs_only_the_entropy_of_the_target():
    # Two classes, three utterances each, audio equals its class description exactly.
    e = torch.eye(2, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    a = e[y]
    t = e[y]
    # With a huge scale the model puts all mass on the 3 same-class columns, uniformly:
    # that is exactly the label-equality target, so the loss is its entropy log(3).
    assert contrastive_loss(a, t, y, 200.0, "ce").item() == pytest.approx(math.log(3), abs=1e-9)
    # Pairing each utterance with the other class's description costs far more.
    worse = contrastive_loss(a, e[1 - y], y, 200.0, "ce").item()
    assert worse > math.log(3) + 10


def test_kl_is_zero_when_prediction_equals_softmax_of_label_matrix():
    # logits = label-equality matrix (scale 1, embeddings chosen so a_i·t_j = same_ij).
    e = torch.eye(2, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    assert contrastive_loss(e[y], e[y], y, 1.0, "kl").item() == pytest.approx(0.0, abs=1e-12)
    assert contrastive_loss(e[y], e[y], y, 5.0, "kl").item() > 0.1


def test_excluded_utterances_do_not_count_and_get_no_gradient():
    g = torch.Generator().manual_seed(3)
    a = F.normalize(torch.randn(6, 4, generator=g), dim=1).requires_grad_()
    t = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    y = torch.tensor([0, -1, 1, 1, -1, 0])
    loss = contrastive_loss(a, t, y, 10.0)
    keep = y >= 0
    assert loss.item() == pytest.approx(contrastive_loss(a[keep], t[keep], y[keep], 10.0).item(), rel=1e-6)
    loss.backward()
    assert torch.all(a.grad[~keep] == 0)
    assert torch.all(a.grad[keep].abs().sum(1) > 0)
    assert contrastive_loss(a, t, torch.full((6,), -1), 10.0).item() == 0.0


def test_multitask_is_the_sum_over_emotions_with_each_emotions_own_texts():
    g = torch.Generator().manual_seed(4)
    a = F.normalize(torch.randn(8, 5, generator=g), dim=1)
    poles = F.normalize(torch.randn(3, 2, 5, generator=g), dim=2)
    y = torch.randint(-1, 2, (8, 3), generator=g)
    expect = sum(contrastive_loss(a, poles[k][y[:, k].clamp(min=0)], y[:, k], 12.0) for k in range(3))
    assert multitask_loss(a, poles, y, 12.0).item() == pytest.approx(float(expect), rel=1e-6)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        contrastive_loss(torch.ones(2, 2), torch.ones(2, 2), torch.tensor([0, 1]), 1.0, "hinge")
