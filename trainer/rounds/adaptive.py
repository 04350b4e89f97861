"""The adaptive neighbor rule (DESIGN.md section 1).

After a round, with softmax predictions p_i and entropies H_i = -sum_c p_ic log p_ic on the target training
set: K_i += sigma0 * K0 if misclassified; K_i += sigma1 * K0 if correct and H_i >= delta; else unchanged;
capped at K_max. Increments are rounded to whole neighbors (sigma * K0 need not be an integer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KUpdate:
    k: torch.Tensor  # (N,) long, the new K_i
    misclassified: int
    uncertain: int  # correct but H_i >= delta


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """H_i of each row of (N, C) probabilities, natural log; 0 log 0 = 0."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(dim=1)  # (N,)


def update_k(
    k: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    k0: int,
    sigma0: float,
    sigma1: float,
    delta: float,
    k_max: int,
) -> KUpdate:
    """The new K (N,) from the current K (N,), predictions (N, C) and labels (N,)."""
    wrong = probs.argmax(dim=1) != labels  # (N,)
    uncertain = ~wrong & (entropy(probs) >= delta)  # (N,)
    step = torch.zeros_like(k)
    step[wrong] = round(sigma0 * k0)
    step[uncertain] = round(sigma1 * k0)
    new_k = torch.minimum(k + step, torch.full_like(k, k_max))
    # A K above the cap (e.g. a changed --k-max on resume) is never shrunk: fetched neighbors stay fetched.
    new_k = torch.maximum(new_k, k)
    return KUpdate(k=new_k, misclassified=int(wrong.sum()), uncertain=int(uncertain.sum()))


def sampling_weights(k: torch.Tensor, k0: int) -> torch.Tensor:
    """Target sampling weights K_i / K0: hard targets are drawn more often (as the official code does)."""
    return k.double() / float(k0)
