"""Target loading and its errors, the model's heads, one deterministic training step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from trainer.cli import main
from trainer.data import ImageStore, TargetError, load_target
from trainer.model import JointModel, load_backbone_weights
from trainer.train import accuracy, draw_plan, train_epoch

from .helpers import make_target


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    return make_target(tmp_path_factory.mktemp("target"))


def test_load_target_lists_and_skips_unreadable(tmp_path: Path, target: Path, capsys):
    root = tmp_path / "t"
    shutil.copytree(target, root)
    (root / "train" / "dots" / "broken.png").write_bytes(b"not a png")
    ts = load_target(root, ImageStore(32))
    assert ts.classes == ["checker", "dots", "stripes"]
    assert len(ts.train) == 12 and len(ts.val) == 9
    assert ts.skipped and "broken.png" in ts.skipped[0][0]
    assert "broken.png" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: shutil.rmtree(r / "val"), "no val/ folder"),
        (lambda r: [p.unlink() for p in (r / "train" / "dots").iterdir()], "'dots'"),
        (lambda r: shutil.rmtree(r / "val" / "dots"), "classes differ"),
    ],
)
def test_bad_targets_raise_and_the_cli_exits_2(tmp_path: Path, target: Path, damage, message, capsys):
    root = tmp_path / "t"
    shutil.copytree(target, root)
    damage(root)
    with pytest.raises(TargetError, match=message):
        load_target(root, ImageStore(32))
    # The CLI fails on the target before contacting the service (nothing listens on port 9).
    code = main(
        ["run", "--target", str(root), "--service", "http://127.0.0.1:9", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--k0", "0"], "--k0"),
        (["--k0", "9", "--k-max", "3"], "--k-max"),
        (["--source-mode", "some"], "--source-mode"),
        (["--service", "localhost:8000"], "--service"),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path: Path, target: Path, argv, message, capsys):
    base = ["run", "--target", str(target), "--service", "http://127.0.0.1:9", "--out", str(tmp_path)]
    try:
        code = main(base + argv)
    except SystemExit as exc:  # argparse's own checks (choices)
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("arch", ["resnet18", "squeezenet1_0", "mobilenet_v3_small"])
def test_joint_model_heads_and_growth(arch):
    model = JointModel(arch, n_target=3, n_source=2).eval()
    t, s = model(torch.zeros(5, 3, 32, 32), 2)
    assert t.shape == (2, 3) and s.shape == (3, 2)
    old = model.source_head.weight.detach().clone()
    model.resize_source_head(4)
    assert model.source_head.out_features == 4 and torch.equal(model.source_head.weight[:2], old)


def test_weights_file_loads_backbone_and_ignores_classifier(tmp_path: Path):
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=7)
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    model = JointModel("resnet18", 3, 1, weights=str(path))
    assert torch.equal(model.backbone.conv1.weight, net.conv1.weight)
    _, unexpected = load_backbone_weights(model.backbone, path)
    assert unexpected == ["fc.weight", "fc.bias"]


def _one_epoch(target: Path, seed: int) -> tuple[float, torch.Tensor]:
    store = ImageStore(32)
    ts = load_target(target, store)
    paths = [p for p, _ in ts.train]
    torch.manual_seed(seed)
    model = JointModel("squeezenet1_0", 3, 2)
    # Sources: the target images themselves under two fake source classes.
    pick = lambda targets, u: targets  # noqa: E731
    plan = draw_plan(torch.ones(len(paths)), 1, pick, torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stats = train_epoch(
        model,
        plan,
        paths,
        ts.train_labels,
        lambda i: paths[i],
        {i: i % 2 for i in range(12)},
        store,
        opt,
        scaler,
        torch.device("cpu"),
        batch_size=6,
    )
    return stats.loss, model.target_head.weight.detach().clone()


def test_training_step_is_deterministic_and_finite(target: Path):
    torch.use_deterministic_algorithms(True, warn_only=True)
    loss_a, w_a = _one_epoch(target, 3)
    loss_b, w_b = _one_epoch(target, 3)
    assert loss_a == loss_b and torch.equal(w_a, w_b) and torch.isfinite(torch.tensor(loss_a))


def test_mean_class_accuracy_weighs_classes_equally():
    probs = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [0, 1.0]])
    labels = torch.tensor([0, 0, 0, 0]).clone()
    labels[3] = 1
    assert accuracy(probs, labels, 2) == (1.0, 1.0)
    labels2 = torch.tensor([0, 0, 0, 1])
    probs2 = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [1.0, 0]])
    assert accuracy(probs2, labels2, 2) == (0.5, 0.75)
