"""The conv bank on a timm architecture: EfficientNet-Lite0's stem (conv_stem; with layers=2 also the first
block's depthwise conv after bn1 + ReLU6) from a random state dict saved to tmp, checked against the network's
own forward, the normalisation it records in the spec, and an index built with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.backbones import create_model
from services.filters import build_bank, conv_spec
from services.weights import IMAGENET_MEAN, IMAGENET_STD, NORMALIZATION_KEY

ARCH = "efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(bare state dict file, the same with a recorded 0.5 normalisation, the state dict)."""
    torch.manual_seed(0)
    model = create_model(ARCH)
    with torch.no_grad():  # non-trivial BN statistics, so a skipped or misplaced BN would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    state = model.state_dict()
    folder = tmp_path_factory.mktemp("lite0")
    bare, recorded = folder / "bare.pt", folder / "recorded.pt"
    torch.save(state, bare)
    torch.save({"state_dict": state, NORMALIZATION_KEY: {"mean": [0.5] * 3, "std": [0.5] * 3}}, recorded)
    return bare, recorded, state


def _reference(state: dict, images: np.ndarray, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """conv_stem's and blocks[0][0].conv_dw's outputs inside timm's own forward (hooks)."""
    model = create_model(ARCH)
    model.load_state_dict(state)
    model.eval()
    seen = {}
    model.conv_stem.register_forward_hook(lambda m, i, o: seen.setdefault("stem", o))
    model.blocks[0][0].conv_dw.register_forward_hook(lambda m, i, o: seen.setdefault("dw", o))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        model(x)
    return seen["stem"], seen["dw"]


def test_two_layer_stem_equals_the_network_forward(lite0):
    _, recorded, state = lite0
    spec = conv_spec(recorded, arch=ARCH, layers=2, size=32)
    assert spec.layer_sizes == [32, 32]
    assert spec.conv.mean == (0.5, 0.5, 0.5) and spec.conv.std == (0.5, 0.5, 0.5)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    first, second = build_bank(spec, conv_weights=recorded)(images)
    stem, dw = _reference(state, images, (0.5,) * 3, (0.5,) * 3)
    torch.testing.assert_close(first, stem)
    torch.testing.assert_close(second, dw)


def test_bare_state_dict_gets_timm_default_normalization(lite0):
    bare, _, state = lite0
    spec = conv_spec(bare, arch=ARCH, layers=1, size=32)
    assert (spec.conv.mean, spec.conv.std) == (IMAGENET_MEAN, IMAGENET_STD)  # timm's pretrained_cfg for lite0
    images = np.full((1, 32, 32, 3), 128, dtype=np.uint8)
    (first,) = build_bank(spec, conv_weights=bare)(images)
    torch.testing.assert_close(first, _reference(state, images, IMAGENET_MEAN, IMAGENET_STD)[0])


def test_build_with_a_timm_stem(lite0, tmp_path):
    from retrieval_service.build.builder import build_index
    from retrieval_service.index.loaded import LoadedIndex
    from tests.retrieval.buildutil import SMALL, image_folder

    _, recorded, _ = lite0
    source = image_folder(tmp_path / "src", per_class=2)
    build_index(source, tmp_path / "index", bank="conv", conv_weights=recorded, conv_arch=ARCH, conv_layers=2,
                bins=8, **SMALL)
    index = LoadedIndex.load(tmp_path / "index")
    assert index.spec.conv.arch == ARCH and index.spec.layer_sizes == [32, 32]
    assert index.size == sum(1 for p in source.rglob("*.png"))
