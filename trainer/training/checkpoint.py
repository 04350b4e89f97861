"""Atomic checkpoints at round boundaries: everything a resumed run needs to continue bit for bit."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.fileio import atomic_writer

CHECKPOINT = "checkpoint.pt"


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, state: dict[str, Any]) -> Path:
    """torch.save to a temporary file in ``out`` and rename: a kill never leaves a half-written checkpoint."""
    path = out / CHECKPOINT
    with atomic_writer(path) as f:  # a file object: torch's zip writer never sees the temporary name
        torch.save(state, f)
    return path


def load_checkpoint(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT
    if not path.is_file():
        return None
    # Our own file, holding numpy RNG state and plain containers: not restricted to tensors.
    return torch.load(path, map_location="cpu", weights_only=False)
