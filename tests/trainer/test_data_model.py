"""Target loading and its errors, the model's heads, one deterministic training step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from services.backbones import Normalization
from trainer.cli import main
from trainer.rounds.plan import Plan, cycle_own_lists, target_order, uniforms
from trainer.training.data import ImageStore, TargetError, load_target, normalise
from trainer.training.distributed import Dist
from trainer.training.model import JointModel, load_backbone_weights
from trainer.training.steps import Batch, StepRunner, accuracy, joint_loss, predict

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
        (["--source-ratio", "0"], "--source-ratio"),
        (["--lr-milestones", "0.5,2"], "--lr-milestones"),
        (["--crop-scale", "0"], "--crop-scale"),
        (["--match-pool", "."], "--match-pool needs --source-mode random"),
        (["--source-mode", "random", "--match-pool", "/nonexistent"], "--match-pool"),
        (["--train-layers", "some"], "--train-layers"),
        (["--max-per-source", "0"], "--max-per-source"),
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


def _steps(target: Path, seed: int) -> tuple[list[float], torch.Tensor]:
    """Three joint steps of a fixed plan; the sources are the target images under two fake classes."""
    store = ImageStore(32)
    ts = load_target(target, store)
    paths = ts.train_paths
    torch.manual_seed(seed)
    model = JointModel("squeezenet1_0", 3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    runner = StepRunner(model, opt, sched, scaler, torch.device("cpu"), 0.1)
    order = target_order(torch.ones(len(paths), dtype=torch.long), 18, seed, 0)
    plan = Plan(order, cycle_own_lists(order, [[i] for i in range(len(paths))], 1, seed, 0), 3, 6, 1)
    losses = []
    for step in range(plan.steps):
        t, s = plan.batch(step, 0)
        u = uniforms(seed, 0, step, plan, 0)
        x = torch.cat([store.train_batch([paths[i] for i in t.tolist()], u[:, 0]),
                       store.train_batch([paths[i] for i in s.flatten().tolist()], u[:, 1])])
        model.train()
        batch = Batch(x, len(t), ts.train_labels[t], s.flatten() % 2)
        losses.append(float(runner.step(batch)[0]))
    return losses, model.target_head.weight.detach().clone()


def test_training_steps_are_deterministic_and_finite(target: Path):
    torch.use_deterministic_algorithms(True, warn_only=True)
    loss_a, w_a = _steps(target, 3)
    loss_b, w_b = _steps(target, 3)
    assert loss_a == loss_b and torch.equal(w_a, w_b) and all(torch.isfinite(torch.tensor(loss_a)))
    loss_c, _ = _steps(target, 4)
    assert loss_c != loss_a  # the seed matters: different plans and crops


def test_joint_loss_weights_half_and_half_and_target_alone_without_sources():
    logits_t, logits_s = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    y_t, y_s = torch.tensor([0]), torch.tensor([2])
    loss, ce_t, ce_s = joint_loss(logits_t, y_t, logits_s, y_s, 0.0)
    assert torch.isclose(loss, 0.5 * ce_t + 0.5 * ce_s) and ce_s > ce_t
    alone, ce_t2, zero = joint_loss(logits_t, y_t, logits_s[:0], y_s[:0], 0.0)
    assert torch.isclose(alone, ce_t2) and float(zero) == 0.0  # mode none: CE_target with weight 1


def test_mean_class_accuracy_weighs_classes_equally():
    probs = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [0, 1.0]])
    labels = torch.tensor([0, 0, 0, 0]).clone()
    labels[3] = 1
    assert accuracy(probs, labels, 2) == (1.0, 1.0)
    labels2 = torch.tensor([0, 0, 0, 1])
    probs2 = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [1.0, 0]])
    assert accuracy(probs2, labels2, 2) == (0.5, 0.75)


def test_inputs_are_normalised_with_the_models_own_mean_and_std(target: Path):
    x = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(normalise(x, Normalization((0.5,) * 3, (0.5,) * 3)), torch.ones(1, 3, 4, 4))
    store = ImageStore(32)
    paths = load_target(target, store).val_paths[:3]
    torch.manual_seed(0)
    model = JointModel("resnet18", 3, 1)
    imagenet = predict(model, paths, store, torch.device("cpu"), 4, Dist())
    model.normalization = Normalization((0.5,) * 3, (0.5,) * 3)  # e.g. EfficientNet-Lite0's weights record
    assert not torch.allclose(predict(model, paths, store, torch.device("cpu"), 4, Dist()), imagenet)
