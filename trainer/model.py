"""One torchvision backbone, two linear heads: target classes and the source classes in use (re-indexed)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from services.errors import WeightsError


def _strip_classifier(net: nn.Module) -> int:
    """Replace the classifier of a torchvision classification model by Identity; returns the feature width."""
    for name in ("fc", "heads", "head", "classifier"):
        head = getattr(net, name, None)
        if head is None:
            continue
        if isinstance(head, nn.Linear):
            setattr(net, name, nn.Identity())
            return head.in_features
        convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
        if convs:
            # SqueezeNet: Dropout -> Conv(512, classes) -> ReLU -> AvgPool; pool the 512 features instead.
            setattr(net, name, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
            return convs[0].in_channels
        if isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Linear):
            # VGG, AlexNet, MobileNet, EfficientNet, ConvNeXt, ViT heads: keep what precedes the last Linear.
            width = head[-1].in_features
            head[-1] = nn.Identity()
            return width
    raise WeightsError(f"{type(net).__name__}: no fc/classifier/heads to replace; not a classification model")


def build_backbone(arch: str) -> tuple[nn.Module, int]:
    """``torchvision.models.<arch>(weights=None)`` without its classifier; (module, feature width)."""
    factory = getattr(torchvision.models, arch, None)
    if factory is None or not callable(factory):
        raise WeightsError(f"unknown torchvision architecture {arch!r}")
    kwargs = {"aux_logits": False, "init_weights": True} if arch in ("inception_v3", "googlenet") else {}
    net = factory(weights=None, **kwargs)
    return net, _strip_classifier(net)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load a state dict file into the backbone; classifier keys (fc/classifier/heads) are ignored.

    Returns (missing, unexpected) keys; raises WeightsError when nothing matches or shapes disagree.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"cannot read weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = backbone.state_dict()
    keep = {k: v for k, v in state.items() if k in own}
    bad = [k for k, v in keep.items() if v.shape != own[k].shape]
    if bad:
        raise WeightsError(f"weights {path} do not fit this architecture: shape mismatch at {bad[:3]}")
    if not keep:
        raise WeightsError(f"weights {path} share no parameter names with this architecture")
    result = backbone.load_state_dict(keep, strict=False)
    return list(result.missing_keys), [k for k in state if k not in own]


class JointModel(nn.Module):
    """Backbone -> features (N, F) -> target logits (N, C_t) and source logits (N, C_s)."""

    def __init__(self, arch: str, n_target: int, n_source: int = 1, weights: str | None = None):
        super().__init__()
        self.backbone, width = build_backbone(arch)
        if weights:
            load_backbone_weights(self.backbone, weights)
        self.target_head = nn.Linear(width, n_target)
        self.source_head = nn.Linear(width, max(1, n_source))

    def forward(self, x: torch.Tensor, n_target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n_target`` rows of x are target images, the rest source images: both heads run inside
        forward so DDP synchronises their gradients."""
        features = self.backbone(x)  # (N, F)
        return self.target_head(features[:n_target]), self.source_head(features[n_target:])

    def resize_source_head(self, n_source: int) -> None:
        """Grow the source head to ``n_source`` classes, keeping the rows already trained (new rows: fresh
        init)."""
        old = self.source_head
        if n_source <= old.out_features:
            return
        new = nn.Linear(old.in_features, n_source).to(old.weight.device)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.source_head = new
