"""The adaptive K rule, exactly (DESIGN.md section 1)."""

from __future__ import annotations

import math

import torch

from trainer.rounds.adaptive import entropy, sampling_weights, update_k


def test_rule_misclassified_uncertain_confident_and_cap():
    # Four targets of a 2-class problem, all labelled 0.
    probs = torch.tensor(
        [
            [0.2, 0.8],  # misclassified          -> + sigma0 * K0
            [0.55, 0.45],  # correct, H ~ 0.688 >= delta -> + sigma1 * K0
            [0.99, 0.01],  # correct, confident   -> unchanged
            [0.1, 0.9],  # misclassified but near the cap
        ]
    )
    labels = torch.zeros(4, dtype=torch.long)
    k = torch.tensor([5, 5, 5, 40])
    delta = 0.5 * math.log(2)
    upd = update_k(k, probs, labels, k0=5, sigma0=4, sigma1=2, delta=delta, k_max=50)
    assert upd.k.tolist() == [25, 15, 5, 50]
    assert (upd.misclassified, upd.uncertain) == (2, 1)


def test_entropy_threshold_is_inclusive_and_matches_formula():
    p = torch.tensor([[0.5, 0.5]])
    assert torch.allclose(entropy(p), torch.tensor([math.log(2)]))
    upd = update_k(torch.tensor([3]), p, torch.tensor([0]), 3, 4, 2, delta=math.log(2), k_max=100)
    assert upd.k.tolist() == [9] and upd.uncertain == 1


def test_fractional_sigma_rounds_and_weights_follow_k():
    upd = update_k(torch.tensor([4]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]), 4, 0.5, 0.25, 1.0, 100)
    assert upd.k.tolist() == [6]
    assert sampling_weights(torch.tensor([4, 8, 20]), 4).tolist() == [1.0, 2.0, 5.0]
