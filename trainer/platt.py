"""Platt scaling of a bipolar emotion's margin: logistic regression of a binary label on
one number, m = a·p − a·n, giving the prompt file's temperature (slope) and bias."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Ridge on the slope of the standardised margin (a prior of sd 1 on it): keeps A finite
# when a sample's classes separate, and pulls a small sample's scores towards its base
# rate rather than towards 0 or 1. On the demo, 0.01 fitted the fitted sessions better
# and the held-out session worse (log-loss summed over the emotions 4.55 against 4.35).
L2 = 1.0


class Refused(ValueError):
    """This emotion's sample cannot be fitted; the message says why."""


@dataclass(frozen=True)
class Platt:
    a: float  # the temperature
    b: float  # the bias
    iterations: int


def platt_fit(margins, labels, l2: float = L2, slope: float | None = None, max_iter: int = 100) -> Platt:
    """sigmoid(a·m + b) fitted to labels (0/1, or targets in [0, 1]) by damped Newton on the
    L2-penalised log-likelihood of the standardised margin (only b when `slope` fixes a);
    deterministic. Raises Refused when a fit means nothing: no data, one class only, or
    margins that are all equal."""
    m = np.asarray(margins, np.float64).reshape(-1)
    t = np.asarray(labels, np.float64).reshape(-1)
    if m.shape != t.shape or m.size == 0:
        raise Refused(f"{m.size} margins for {t.size} labels")
    if not (np.all(np.isfinite(m)) and np.all((t >= 0) & (t <= 1))):
        raise Refused("margins must be finite and labels in [0, 1]")
    if t.min() == t.max() and t[0] in (0.0, 1.0):
        raise Refused(f"every label is {int(t[0])}")
    if np.max(np.abs(m)) > 1e6:  # a margin of unit vectors is within [-2, 2]
        raise Refused("margins must be finite: these are far outside [-2, 2]")
    mu, sd = float(m.mean()), float(m.std())
    if not sd > 1e-12 * max(1.0, abs(mu)):
        raise Refused("every clip has the same margin: the prompt does not tell them apart")
    z = (m - mu) / sd
    free = np.array([slope is None, True])

    def objective(w: np.ndarray) -> float:
        s = w[0] * z + w[1]
        # t·softplus(−s) + (1 − t)·softplus(s): softplus(s) − t·s without its cancellation,
        # which near saturated targets left the line search unable to tell steps apart.
        return float(np.sum(t * np.logaddexp(0.0, -s) + (1 - t) * np.logaddexp(0.0, s)) + 0.5 * l2 * w[0] ** 2)

    rate = float(np.clip(t.mean(), 1e-6, 1 - 1e-6))
    a0 = 0.0 if slope is None else float(slope) * sd
    w = np.array([a0, math.log(rate / (1 - rate))])
    f, it = objective(w), 0
    for it in range(1, max_iter + 1):
        p = 0.5 * (1.0 + np.tanh(0.5 * (w[0] * z + w[1])))
        r, v = p - t, p * (1 - p)
        grad = np.array([r @ z + l2 * w[0], r.sum()]) * free
        hess = np.array([[v @ (z * z) + l2, v @ z], [v @ z, v.sum()]])
        hess = np.where(np.outer(free, free), hess, np.eye(2)) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-10:  # backtrack until the objective goes down
            trial = w - scale * step
            ft = objective(trial)
            if ft <= f - 1e-4 * scale * float(grad @ step):
                break
            scale *= 0.5
        else:
            break  # no step helps: at the optimum to machine precision
        w, f_old, f = trial, f, ft
        if np.max(np.abs(scale * step)) < 1e-10 or f_old - f < 1e-13 * max(1.0, abs(f)):
            break
    return Platt(a=float(w[0] / sd), b=float(w[1] - w[0] * mu / sd), iterations=it)


@dataclass(frozen=True)
class Fusion:
    audio: float  # the fused score's weight on the audio path's calibrated logit
    text: float   # and on the text path's
    iterations: int


def fusion_fit(audio_logits, text_logits, labels, l2: float = L2, max_weight: float = 10.0,
               max_iter: int = 100) -> Fusion:
    """sigmoid(w_a·logit_a + w_t·logit_t) fitted to labels: logistic regression without an
    intercept (each path's bias is in its logit) by damped Newton, with the ridge pulling
    both weights towards 1 (an even product of the two calibrated paths) rather than 0, and
    the weights kept within [0, max_weight]. Raises Refused for a sample that means nothing."""
    x = np.stack([np.asarray(audio_logits, np.float64).reshape(-1),
                  np.asarray(text_logits, np.float64).reshape(-1)], 1)
    t = np.asarray(labels, np.float64).reshape(-1)
    if x.shape[0] != t.size or t.size == 0:
        raise Refused(f"{x.shape[0]} logit pairs for {t.size} labels")
    if not (np.all(np.isfinite(x)) and np.all((t >= 0) & (t <= 1))):
        raise Refused("logits must be finite and labels in [0, 1]")
    if t.min() == t.max():
        raise Refused("every label is the same")
    prior = np.ones(2)

    def objective(w):
        s = x @ w
        return float(np.sum(t * np.logaddexp(0.0, -s) + (1 - t) * np.logaddexp(0.0, s))
                     + 0.5 * l2 * np.sum((w - prior) ** 2))

    w, f, it = prior.copy(), objective(prior), 0
    for it in range(1, max_iter + 1):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ w)))
        grad = x.T @ (p - t) + l2 * (w - prior)
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(2) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-10:
            trial = np.clip(w - scale * step, 0.0, max_weight)
            ft = objective(trial)
            if ft < f:  # projected onto the box, so any decrease is accepted
                break
            scale *= 0.5
        else:
            break
        moved = float(np.max(np.abs(trial - w)))
        w, f_old, f = trial, f, ft
        if moved < 1e-10 or f_old - f < 1e-13 * max(1.0, abs(f)):
            break
    return Fusion(audio=float(w[0]), text=float(w[1]), iterations=it)
