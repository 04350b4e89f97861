"""Cost of one full fine-tuning step (forward + backward + SGD, nothing frozen) of EfficientNet-Lite0 on this
machine: the figure bench/gpu_science.py's sizing starts from. Synthetic inputs (no decoding), so it is the
network's compute alone; the trainer adds augmentation and data handling on top.

    OMP_NUM_THREADS=1 .venv/bin/python bench/step_cost.py --batch 32 --size 224 --steps 3
"""

from __future__ import annotations

import argparse
import time

import timm
import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32, help="images per step (16 target + 16 source: 32)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=20).to(args.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
    y = torch.randint(0, 20, (args.batch,), device=args.device)
    times = []
    for _ in range(args.steps + 1):  # the first step warms up
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    per_step = sorted(times[1:])[len(times[1:]) // 2]
    print(f"efficientnet_lite0 full fine-tuning, {args.batch} x {args.size} px on {args.device} "
          f"({torch.get_num_threads()} threads): {per_step:.2f} s/step (median of {args.steps}), "
          f"{args.batch / per_step:.1f} img/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
