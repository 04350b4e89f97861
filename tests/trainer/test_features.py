"""A frozen trunk (--freeze-until) and its feature cache: the cached path gives the live trunk's logits, a
second run over the same model computes no trunk forwards and ends with the same metrics, frozen weights and
BatchNorm statistics never move while the tail trains, a resumed run after kill -9 ends as the uninterrupted
one, and bad freeze points exit 2 with one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from trainer.cli import main
from trainer.training.data import ImageStore, load_target, normalise
from trainer.training.features import TrunkFeatures, view_indices
from trainer.training.model import JointModel

from .conftest import run_trainer, trainer_cmd
from .test_e2e import kill_after_round_0_and_resume, metrics

pytestmark = pytest.mark.timeout(300)

FROZEN = ["--arch", "resnet18", "--freeze-until", "layer3", "--views", "3"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A resnet18 state dict, so the frozen trunk is the same in every process whatever the seed."""
    import torchvision

    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def forwards(stdout: str) -> list[int]:
    """Trunk forwards per round from the trainer's 'feature cache: round R: N trunk forwards' lines."""
    return [int(n) for n in re.findall(r"^feature cache: round \d+: (\d+) trunk forwards", stdout, re.M)]


@pytest.fixture(scope="module")
def cold(service, small_target, weights, tmp_path_factory) -> tuple[Path, Path, str]:
    """(run dir, cache dir, stdout) of a two-round frozen run that starts with an empty feature cache."""
    root = tmp_path_factory.mktemp("cold")
    cmd = trainer_cmd(small_target, service, root / "run", root / "cache", *FROZEN, "--weights", str(weights))
    done = run_trainer(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run", root / "cache", done.stdout


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet18"])
def test_cached_features_give_the_live_trunks_logits(small_target: Path, tmp_path: Path, arch: str):
    store = ImageStore(32)
    paths = load_target(small_target, store).train_paths[:6]
    torch.manual_seed(0)
    model = JointModel(arch, 3, 2, freeze_until="blocks.5" if arch != "resnet18" else "layer2").eval()
    views = torch.tensor([0, 1, 2, 3, 1, 0])

    def cache() -> TrunkFeatures:
        return TrunkFeatures(model.trunk, model.normalization, store, torch.device("cpu"), 4, tmp_path)

    live = TrunkFeatures(model.trunk, model.normalization, store, torch.device("cpu"), 4, None)
    images, from_features = live.batch(paths, views)
    assert not from_features and images.dtype == torch.uint8
    with torch.no_grad():
        expected = model(normalise(images, model.normalization), 3)
        first = cache()
        f, from_features = first.batch(paths, views)
        got = model(f, 3, from_features=True)
    assert from_features and first.stats.forwards == 6
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, rtol=2e-2, atol=2e-3)  # float16 storage of the features
    # The same object answers from memory; a new one (another run) from disk: no trunk forward at all.
    assert torch.equal(first.features(paths, views), f) and first.stats.forwards == 6
    second = cache()
    assert torch.equal(second.features(paths, views), f)
    assert second.stats.forwards == 0 and second.stats.disk_hits == 6


def test_reinit_tail_keeps_the_pretrained_trunk_and_gives_the_tail_a_fresh_seeded_init(weights: Path):
    pretrained = torch.load(weights)
    torch.manual_seed(3)
    model = JointModel("resnet18", 3, weights=str(weights), freeze_until="layer2", reinit_tail=True)
    torch.manual_seed(3)
    again = JointModel("resnet18", 3, weights=str(weights), freeze_until="layer2", reinit_tail=True)
    state = model.backbone.state_dict()
    for key in ("conv1.weight", "layer2.1.conv2.weight", "layer2.1.bn2.running_var"):
        assert torch.equal(state[key], pretrained[key])  # the trunk keeps the weights
    for key in ("layer3.0.conv1.weight", "layer4.1.conv2.weight"):
        assert not torch.allclose(state[key], pretrained[key])  # the tail forgets them ...
        assert torch.equal(state[key], again.backbone.state_dict()[key])  # ... for a seeded fresh init
    bn = model.backbone.layer4[1].bn2
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))


def test_views_depend_on_the_image_only_and_runs_pick_them_by_seed(small_target: Path):
    store = ImageStore(32)
    paths = load_target(small_target, store).train_paths[:2]
    model = JointModel("resnet18", 3, freeze_until="layer1")
    a = TrunkFeatures(model.trunk, model.normalization, store, torch.device("cpu"), 4, None)
    b = TrunkFeatures(model.trunk, model.normalization, ImageStore(32), torch.device("cpu"), 4, None)
    views = torch.tensor([1, 2])
    assert torch.equal(a.images(paths, views), b.images(paths, views))
    assert not torch.equal(a.images(paths, views), a.images(paths, torch.tensor([2, 1])))
    picked = view_indices(torch.rand(1000, 5, generator=torch.Generator().manual_seed(1)), 4)
    assert set(picked.tolist()) == {1, 2, 3}  # training never takes view 0, the evaluation view
    assert set(view_indices(torch.rand(5, 5), 1).tolist()) == {0}


def test_second_run_computes_no_trunk_forwards_and_ends_with_the_same_metrics(
    cold, service, small_target, weights, tmp_path: Path
):
    run, cache, stdout = cold
    first = forwards(stdout)
    assert len(first) == 2 and first[0] > 0
    keys = list((cache / "features").iterdir())
    assert len(keys) == 1 and json.loads((keys[0] / "key.json").read_text())["freeze_until"] == "layer3"
    cmd = trainer_cmd(small_target, service, tmp_path / "run", cache, *FROZEN, "--weights", str(weights))
    done = run_trainer(cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert forwards(done.stdout) == [0, 0]
    assert metrics(tmp_path / "run") == metrics(run)


def test_no_feature_cache_runs_the_live_trunk_on_the_same_views(
    cold, service, small_target, weights, tmp_path: Path
):
    run, _, _ = cold
    extra = [*FROZEN, "--weights", str(weights), "--no-feature-cache"]
    done = run_trainer(trainer_cmd(small_target, service, tmp_path / "run", tmp_path / "cache", *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    assert forwards(done.stdout) == [] and not (tmp_path / "cache" / "features").exists()
    live, cached = metrics(tmp_path / "run")[0], metrics(run)[0]
    assert live["loss"] == pytest.approx(cached["loss"], rel=1e-2)  # float16 features: not bit-equal


def test_frozen_weights_and_statistics_stay_the_tail_trains(cold, weights):
    run, _, _ = cold
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    init = torch.load(weights, map_location="cpu")
    frozen = [k for k in init if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3")]
    tail = [k for k in init if k.startswith("layer4.") and k.endswith(("weight", "running_mean"))]
    assert frozen and tail
    assert all(torch.equal(state[f"backbone.{k}"], init[k]) for k in frozen)  # BN running stats included
    assert all(not torch.equal(state[f"backbone.{k}"], init[k]) for k in tail)


def test_resume_after_kill_9_with_the_feature_cache_ends_as_uninterrupted(
    cold, service, small_target, weights, tmp_path: Path
):
    run, _, _ = cold
    extra = [*FROZEN, "--weights", str(weights)]
    cmd = trainer_cmd(small_target, service, tmp_path / "run", tmp_path / "cache", *extra)
    done = kill_after_round_0_and_resume(cmd, tmp_path / "run", tmp_path / "stderr.txt")
    assert len(forwards(done.stdout)) == 1  # round 1 only, with round 0's features already on disk
    assert metrics(tmp_path / "run") == metrics(run)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--arch", "efficientnet_lite0", "--freeze-until", "blocks.9"], "valid: conv_stem, bn1, blocks.0"),
        (["--arch", "resnet18", "--freeze-until", "fc"], "valid: conv1, bn1, relu, maxpool, layer1"),
        (["--arch", "squeezenet1_0", "--freeze-until", "features"], "cannot split squeezenet1_0"),
        (["--feature-cache"], "--feature-cache needs --freeze-until"),
        (["--freeze-until", "layer1", "--views", "0"], "--views must be >= 1"),
        (["--freeze-until", "layer1", "--reinit-tail"], "--reinit-tail needs --weights"),
    ],
)
def test_bad_freeze_flags_exit_2_with_one_line(small_target, tmp_path, capsys, flags, says):
    argv = ["run", "--target", str(small_target), "--service", "http://127.0.0.1:9", "--out", str(tmp_path)]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1
