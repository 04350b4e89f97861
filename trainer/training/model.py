"""One backbone (torchvision or timm), two linear heads: target classes and the source classes in use
(re-indexed).

Architectures are named as ``services.backbones`` says (torchvision names first, then timm; ``timm/NAME``
forces timm). ``JointModel.normalization`` is the (mean, std) the backbone's inputs must be normalised with:
the weights file's record (``trainer convert-weights`` writes one), else the architecture's default.

``--freeze-until NAME`` splits the backbone into a frozen ``trunk`` (up to and including NAME; eval mode and
no gradients, always) and the trainable ``tail`` (the rest, through global pooling); training/features.py
caches the trunk's outputs. The split is a view over the backbone's own modules: state dict keys and
checkpoints are the same with or without it.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
from torch import nn

from services.backbones import Normalization, create_model, library_of, normalization
from services.errors import WeightsError
from services.weights import load_weights
from trainer.config import ConfigError

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


def _timm_efficientnet(net: nn.Module) -> bool:
    return all(hasattr(net, n) for n in ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool"))


def _torchvision_resnet(net: nn.Module) -> bool:
    return all(hasattr(net, n) for n in ("conv1", "bn1", "maxpool", "layer4", "avgpool"))


def _stages(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The backbone's modules in forward order, from the input to the pooled (N, F) features; empty for an
    architecture whose forward is not such a chain (it cannot be split)."""
    if _timm_efficientnet(net):
        # timm's optional pre-classifier dropout (drop_rate, 0 unless asked for) is not part of the split.
        blocks = [(f"blocks.{i}", b) for i, b in enumerate(net.blocks)]
        head = [("conv_head", net.conv_head), ("bn2", net.bn2), ("global_pool", net.global_pool)]
        return [("conv_stem", net.conv_stem), ("bn1", net.bn1), *blocks, *head]
    if _torchvision_resnet(net):
        layers = [(n, getattr(net, n)) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2")]
        layers += [(n, getattr(net, n)) for n in ("layer3", "layer4", "avgpool")]
        return [*layers, ("flatten", nn.Flatten(1))]
    return []


POOLING = ("global_pool", "avgpool", "flatten")  # not freeze points: nothing after them to train


def freeze_points(net: nn.Module) -> list[str]:
    """Valid ``--freeze-until`` names of a backbone, in forward order (empty: it cannot be split)."""
    return [name for name, _ in _stages(net) if name not in POOLING]


def check_freeze_point(arch: str, name: str) -> None:
    """ConfigError (one line, listing the valid names) unless ``name`` is a freeze point of ``arch``.
    Builds the architecture on the meta device: no memory, no weights."""
    with torch.device("meta"):
        net, _ = build_backbone(arch)
    valid = freeze_points(net)
    if not valid:
        raise ConfigError(
            f"--freeze-until: cannot split {arch} (supported: timm EfficientNet/MobileNetV2 family, "
            "torchvision ResNet)"
        )
    if name not in valid:
        raise ConfigError(f"--freeze-until {name!r} is not a module of {arch}; valid: {', '.join(valid)}")


def _eval_only(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def split_backbone(net: nn.Module, freeze_until: str | None) -> tuple[nn.Sequential, nn.Sequential]:
    """(trunk, tail): the modules up to and including ``freeze_until`` and the rest; (empty, whole backbone)
    when None. The trunk's parameters stop requiring gradients and its modules are pinned to eval mode: a
    later ``model.train()`` (from any thread) cannot switch its BatchNorm to batch statistics."""
    if freeze_until is None:
        return nn.Sequential(), nn.Sequential(net)
    stages = _stages(net)
    cut = [name for name, _ in stages].index(freeze_until) + 1
    trunk = nn.Sequential(*(m for _, m in stages[:cut]))
    trunk.requires_grad_(False)
    for m in trunk.modules():
        m.train = types.MethodType(_eval_only, m)  # instance override: every train(mode) call means eval
    trunk.eval()
    return trunk, nn.Sequential(*(m for _, m in stages[cut:]))


def reinitialise(module: nn.Module) -> None:
    """Every layer of ``module`` back to its fresh init (PyTorch's ``reset_parameters``; BatchNorm: unit
    scale, zero shift, fresh running statistics). Used by --reinit-tail: the pretrained trunk stays, the top
    layers forget what they learnt about ImageNet's classes, as for a target whose classes the backbone never
    saw."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


class _Split:
    """Holds trunk and tail outside nn.Module registration: they share the backbone's modules, and
    registering them would add second names for the same tensors to the state dict."""

    def __init__(self, trunk: nn.Sequential, tail: nn.Sequential):
        self.trunk, self.tail = trunk, tail


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

    def __init__(
        self,
        arch: str,
        n_target: int,
        n_source: int = 1,
        weights: str | None = None,
        freeze_until: str | None = None,
        reinit_tail: bool = False,
    ):
        super().__init__()
        self.backbone, width = build_backbone(arch)
        recorded = None
        if weights:
            state, recorded = load_weights(weights)
            load_backbone_state(self.backbone, state, weights)
        self.normalization: Normalization = normalization(arch, recorded)
        if freeze_until is not None:
            check_freeze_point(arch, freeze_until)
        self._split = _Split(*split_backbone(self.backbone, freeze_until))
        if reinit_tail:
            reinitialise(self.tail)
        self.target_head = new_head(width, n_target)
        self.source_head = new_head(width, max(1, n_source))

    @property
    def trunk(self) -> nn.Sequential:
        """The frozen modules (empty without --freeze-until): (N, 3, S, S) -> trunk features."""
        return self._split.trunk

    @property
    def tail(self) -> nn.Sequential:
        """The trainable rest of the backbone: trunk features -> pooled (N, F)."""
        return self._split.tail

    def forward(
        self, x: torch.Tensor, n_target: int, from_features: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n_target`` rows of x are target images, the rest source images: both heads run inside
        forward so DDP synchronises their gradients. ``from_features``: x holds trunk outputs (the cache)."""
        if not from_features:
            with torch.no_grad():  # the trunk is frozen: keep no activations for backward
                x = self.trunk(x)
        return self.forward_from_features(x, n_target)

    def forward_from_features(self, f: torch.Tensor, n_target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(target logits, source logits) from trunk features f (e.g. cached ones)."""
        features = self.tail(f)  # (N, F)
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
