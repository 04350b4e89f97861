#!/usr/bin/env bash
# Every CUDA path of the project, checked against its CPU twin, in well under 5 minutes on one GPU:
#   1. FAISS GPU search (flat, IVF-SQ8, PCA + IVF-PQ candidate indexes) vs the same engine on CPU;
#   2. CUDA descriptor extraction (gabor bank, conv bank with conv1 + conv2) vs CPU histograms;
#   3. an AMP (autocast + GradScaler) training step of the trainer's StepRunner on CUDA;
#   4. NCCL DDP under `torchrun --nproc_per_node 1`: all-reduce and one DDP step.
# Prints what it measured; exits non-zero on any mismatch (set -euo pipefail; each check asserts).
# Without a GPU it says so and exits 77 (the conventional "skipped" status), having checked nothing.
#
#   bash bench/gpu_check.sh            (from the project root; PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
started=$SECONDS

gpu_report="$("$PY" - <<'EOF'
import torch, faiss
cuda = torch.cuda.is_available()
n_faiss = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
print(f"{int(cuda)} {n_faiss} {torch.cuda.get_device_name(0) if cuda else '-'}")
EOF
)"
read -r has_cuda faiss_gpus gpu_name <<<"$gpu_report"
if [[ "$has_cuda" != 1 ]]; then
    echo "gpu_check: SKIPPED: no GPU (torch.cuda.is_available() is False, FAISS sees $faiss_gpus GPU(s));" \
         "nothing was checked. Run this on a machine with an NVIDIA GPU and CUDA builds of torch and faiss." >&2
    exit 77
fi
if [[ "$faiss_gpus" -lt 1 ]]; then
    echo "gpu_check: FAIL: torch sees $gpu_name but this FAISS build has no GPU support (install faiss-gpu)" >&2
    exit 1
fi
echo "gpu_check: $gpu_name; torch $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')"

echo "== 1. FAISS GPU search vs CPU"
"$PY" - <<'EOF'
import time
import numpy as np
from retrieval_service.search.engine import SearchEngine

rng = np.random.default_rng(0)
base = rng.dirichlet(np.full(16, 0.7), size=(500, 48)).astype(np.float32)  # histograms with structure
def near(n):
    h = base[rng.integers(0, len(base), n)] * np.exp(0.2 * rng.standard_normal((n, 48, 16)))
    return (h / h.sum(axis=2, keepdims=True)).astype(np.float32)
corpus, queries, w = near(60_000), near(64), np.full(48, 1 / 48, np.float32)
for label, kw in [("flat", dict(kind="flat")), ("ivf-sq8", dict(kind="ivf", codec="sq8")),
                  ("ivf-pq", dict(kind="ivf", codec="pq"))]:
    cpu = SearchEngine.build(corpus, w, device="cpu", **kw)
    gpu = SearchEngine(cpu._store, w, cpu._index.cpu, kind=cpu.kind, nprobe=cpu.nprobe,
                       rerank_factor=cpu.rerank_factor, codec=cpu.codec, device="cuda")
    assert gpu._index.gpu is not None, f"{label}: the engine did not put its index on the GPU"
    _, ref = cpu.search(queries, k=100)
    gpu.search(queries[:4], k=100)  # warm-up
    t = time.perf_counter(); _, got = gpu.search(queries, k=100); dt = time.perf_counter() - t
    _, exact = cpu.search(queries[:16], k=100, exact=True)
    agree = np.mean([len(np.intersect1d(a, b)) / 100 for a, b in zip(got, ref)])
    recall = np.mean([len(np.intersect1d(a, b)) / 100 for a, b in zip(got[:16], exact)])
    print(f"  {label}: GPU/CPU agreement@100 {agree:.4f}, GPU recall@100 {recall:.4f}, "
          f"{len(queries) / dt:.0f} queries/s on GPU")
    assert agree >= 0.99 and recall >= 0.99, f"{label}: GPU results differ from CPU"
EOF

echo "== 2. CUDA extraction vs CPU histograms"
"$PY" - "$WORK" <<'EOF'
import sys, time
import numpy as np, torch, torchvision
from services.extract import DescriptorExtractor, fit_edges
from services.spec import gabor_spec
from services.extract import make_spec

work = sys.argv[1]
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (16, 96, 96, 3), dtype=np.uint8)
images = np.ascontiguousarray(np.cumsum(images, axis=1) % 256).astype(np.uint8)  # some texture
torch.save(torchvision.models.alexnet(weights=None).state_dict(), f"{work}/alexnet.pt")
for label, spec, weights in [("gabor", gabor_spec(size=96, bins=16), None),
                             ("conv", make_spec("conv", size=96, bins=16, conv_weights=f"{work}/alexnet.pt",
                                                layers=2), f"{work}/alexnet.pt")]:
    spec = spec.with_edges(fit_edges(DescriptorExtractor(spec, device="cpu", conv_weights=weights), [images], 16))
    cpu = DescriptorExtractor(spec, device="cpu", conv_weights=weights).histograms(images)
    ext = DescriptorExtractor(spec, device="cuda", conv_weights=weights)
    ext.histograms(images[:2])
    t = time.perf_counter(); gpu = ext.histograms(images); torch.cuda.synchronize(); dt = time.perf_counter() - t
    diff = np.abs(gpu - cpu)
    print(f"  {label}: {cpu.shape[1]} filters, max |GPU - CPU| per bin {diff.max():.2e}, mean {diff.mean():.2e}, "
          f"{len(images) / dt:.0f} images/s on GPU")
    # Float differences move only pixels sitting on a bin edge: a bin may gain or lose a few pixels' mass.
    assert diff.mean() < 1e-4 and diff.max() < 5e-3, f"{label}: CUDA histograms differ from CPU"
EOF

echo "== 3. AMP training step (trainer StepRunner on CUDA)"
"$PY" - <<'EOF'
import torch
from torch import nn
from trainer.training.steps import Batch, StepRunner

class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.target, self.source = nn.Linear(16, 5), nn.Linear(16, 7)
    def forward(self, x, n_target):
        f = self.body(x)
        return self.target(f[:n_target]), self.source(f[n_target:])

dev = torch.device("cuda")
torch.manual_seed(0)
net = TwoHeads().to(dev)
opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
runner = StepRunner(net, opt, torch.optim.lr_scheduler.StepLR(opt, 100), torch.amp.GradScaler("cuda"), dev, 0.0)
g = torch.Generator().manual_seed(0)
batch = Batch(torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=g), 8,
              torch.randint(0, 5, (8,), generator=g), torch.randint(0, 7, (16,), generator=g))
losses = [runner.step(batch)[0].item() for _ in range(30)]
print(f"  loss {losses[0]:.4f} -> {losses[-1]:.4f} over 30 AMP steps, scale {runner.scaler.get_scale():.0f}")
assert all(torch.isfinite(torch.tensor(losses))), "non-finite AMP loss"
assert runner.scaler.is_enabled() and losses[-1] < losses[0], "AMP steps did not reduce the loss"
EOF

echo "== 4. NCCL DDP on one GPU (torchrun --nproc_per_node 1)"
cat >"$WORK/ddp.py" <<'EOF'
import os
import torch, torch.distributed as dist
from torch import nn
dist.init_process_group("nccl")
rank = dist.get_rank(); dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])); torch.cuda.set_device(dev)
t = torch.full((4,), float(rank + 1), device=dev); dist.all_reduce(t)
assert torch.allclose(t, torch.full_like(t, float(sum(range(1, dist.get_world_size() + 1))))), t
model = nn.parallel.DistributedDataParallel(nn.Linear(8, 2).to(dev), device_ids=[dev.index])
before = [p.detach().clone() for p in model.parameters()]
loss = model(torch.randn(16, 8, device=dev)).pow(2).mean(); loss.backward()
torch.optim.SGD(model.parameters(), lr=0.1).step()
assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "DDP step changed nothing"
print(f"  rank {rank}/{dist.get_world_size()}: all_reduce ok, DDP step ok (backend {dist.get_backend()})")
dist.destroy_process_group()
EOF
"$(dirname "$PY")/torchrun" --standalone --nproc_per_node 1 "$WORK/ddp.py"

echo "gpu_check: all CUDA paths agree with CPU ($((SECONDS - started)) s)"
