"""Fixtures of the descriptor tests: a conv weights file written here (fixed seed, never downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory) -> Path:
    """A fresh resnet18 state dict made with seed 0 (the smallest torchvision arch our conv bank supports)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path
