"""One backbone (torchvision or timm), two linear heads: target classes and the source classes in use
(re-indexed).

Architectures are named as ``services.backbones`` says (torchvision names first, then timm; ``timm/NAME``
forces timm). ``JointModel.normalization`` is the (mean, std) the backbone's inputs must be normalised with:
the weights file's record (``trainer convert-weights`` writes one), else the architecture's default.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from services.backbones import Normalization, create_model, library_of, normalization
from services.errors import WeightsError
from services.weights import load_weights

HEAD_INIT_STD = 0.01  # the paper: new layers drawn from N(0, 0.01^2), biases 0


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
    """``arch`` without its classifier, randomly initialised: (module mapping (N, 3, H, W) -> (N, F), F)."""
    if library_of(arch)[0] == "timm":
        net = create_model(arch, num_classes=0)  # timm's feature extractor: pooled (N, num_features)
        return net, int(net.num_features)
    net = create_model(arch)
    return net, _strip_classifier(net)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load a state dict file into the backbone; classifier keys (fc/classifier/heads) are ignored.

    Returns (missing, unexpected) keys; raises WeightsError when nothing matches or shapes disagree.
    """
    return load_backbone_state(backbone, load_weights(path)[0], str(path))


def load_backbone_state(backbone: nn.Module, state: dict, source: str) -> tuple[list[str], list[str]]:
    """``load_backbone_weights`` for a state dict already read (``source`` names it in errors)."""
    path = source
    own = backbone.state_dict()
    keep = {k: v for k, v in state.items() if k in own}
    bad = [k for k, v in keep.items() if v.shape != own[k].shape]
    if bad:
        raise WeightsError(f"weights {path} do not fit this architecture: shape mismatch at {bad[:3]}")
    if not keep:
        raise WeightsError(f"weights {path} share no parameter names with this architecture")
    result = backbone.load_state_dict(keep, strict=False)
    return list(result.missing_keys), [k for k in state if k not in own]


def new_head(width: int, n_classes: int) -> nn.Linear:
    """A linear classifier initialised as the paper's new layers: weights N(0, 0.01^2), biases 0."""
    head = nn.Linear(width, n_classes)
    nn.init.normal_(head.weight, mean=0.0, std=HEAD_INIT_STD)
    nn.init.zeros_(head.bias)
    return head


class JointModel(nn.Module):
    """Backbone -> features (N, F) -> target logits (N, C_t) and source logits (N, C_s).

    ``normalization``: the (mean, std) its inputs in [0, 1] must be normalised with (see module docstring).
    """

    def __init__(self, arch: str, n_target: int, n_source: int = 1, weights: str | None = None):
        super().__init__()
        self.backbone, width = build_backbone(arch)
        recorded = None
        if weights:
            state, recorded = load_weights(weights)
            load_backbone_state(self.backbone, state, weights)
        self.normalization: Normalization = normalization(arch, recorded)
        self.target_head = new_head(width, n_target)
        self.source_head = new_head(width, max(1, n_source))

    def forward(self, x: torch.Tensor, n_target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n_target`` rows of x are target images, the rest source images: both heads run inside
        forward so DDP synchronises their gradients."""
        features = self.backbone(x)  # (N, F)
        return self.target_head(features[:n_target]), self.source_head(features[n_target:])

    def resize_source_head(self, n_source: int) -> None:
        """Grow the source head to ``n_source`` classes, keeping the rows already trained (new rows: the
        paper's N(0, 0.01^2) init)."""
        old = self.source_head
        if n_source <= old.out_features:
            return
        new = new_head(old.in_features, n_source).to(old.weight.device)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.source_head = new
