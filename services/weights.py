"""Local model weights: reading a state dict from a file, and the input normalisation ImageNet models expect.

Nothing is ever downloaded: a weights file is always a local path the user names. Checkpoints come in several
wrappings (a bare state dict, ``{"state_dict": ...}`` or ``{"model": ...}`` as training scripts save,
keys prefixed ``module.`` by DataParallel/DDP); ``unwrap_state_dict`` is the one place that undoes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.errors import WeightsError

# torchvision's ImageNet normalisation (RGB, inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def unwrap_state_dict(obj: Any, source: str = "weights") -> dict[str, Any]:
    """The plain ``{name: tensor}`` dict inside a checkpoint object; WeightsError when there is none."""
    import torch

    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{source} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


# A checkpoint may record the input normalisation its weights were trained with, next to its state dict:
# ``{"state_dict": {...}, "normalization": {"mean": [r, g, b], "std": [r, g, b]}}``
# (``trainer convert-weights`` writes this form). A bare state dict records none.
NORMALIZATION_KEY = "normalization"

Normalization = tuple[tuple[float, float, float], tuple[float, float, float]]  # (mean, std), RGB in [0, 1]


def recorded_normalization(obj: Any, source: str = "weights") -> Normalization | None:
    """(mean, std) a checkpoint object records under ``NORMALIZATION_KEY``, or None when it records none."""
    record = obj.get(NORMALIZATION_KEY) if isinstance(obj, dict) else None
    if record is None:
        return None
    try:
        mean, std = tuple(float(v) for v in record["mean"]), tuple(float(v) for v in record["std"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{source}: bad {NORMALIZATION_KEY!r} record {record!r}") from exc
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise WeightsError(f"{source}: {NORMALIZATION_KEY!r} needs 3 means and 3 positive stds: {record!r}")
    return mean, std


def load_weights(path: str | Path) -> tuple[dict[str, Any], Normalization | None]:
    """(state dict, recorded normalisation or None) of a local weights file; WeightsError naming the file."""
    obj = _read(path)
    source = f"weights file {path}"
    return unwrap_state_dict(obj, source), recorded_normalization(obj, source)


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict from a local file (see ``unwrap_state_dict``); raises WeightsError naming the file."""
    return unwrap_state_dict(_read(path), f"weights file {path}")


def _read(path: str | Path) -> Any:
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a bad file
        raise WeightsError(f"weights file {path} is not a readable torch state dict: {exc}") from exc
    return obj
