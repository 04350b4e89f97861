"""Retrieval quality of each filter bank (issue 18, item 1): the Imagewoof training images as queries against
an index of ``<data>/imagenet-source``; the share of dogs and of the query's own breed among the top 5 / 20 /
100 neighbours, against the corpus base rates, and how many distinct sources the top-5 lists hold.

Each bank is an index served by a real service (``--service NAME=URL``, or ``--index NAME=DIR`` to start one
here); each metric (``--metrics js,skl``) is asked with ``exact: true`` (the whole corpus scanned), the images
sent as ``image_b64``, so the service computes the descriptors as it does for any user.

``--deep`` adds banks beyond the paper, computed here without the service: the EfficientNet-Lite0 embedding
(global-average-pooled ``blocks.4`` output, the frozen trunk of setting 1b, and the pooled ``conv_head``
output, the penultimate layer), cosine similarity, same images (160 px centre crop).

    .venv/bin/python bench/retrieval_quality.py --index gabor=bench_out/imagenet-source-gabor160 \\
        --index conv=bench_out/imagenet-source-conv160 [--deep --weights W.pt] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval_service.testing import live_server  # noqa: E402

BREEDS = ("n02086240", "n02087394", "n02088364", "n02089973", "n02093754", "n02096294", "n02099601",
          "n02105641", "n02111889", "n02115641")
DOGS = (*BREEDS, "n02102040")  # + English springer (an Imagenette class)
DEPTHS = (5, 20, 100)
IMAGE_EXT = (".jpeg", ".jpg", ".png")


def images_of(folder: Path) -> list[tuple[Path, str]]:
    """(path, class folder name) of every image under ``folder/<class>/``, sorted."""
    return [(p, p.parent.name) for p in sorted(folder.glob("*/*")) if p.suffix.lower() in IMAGE_EXT]


def scores(lists: list[list[str]], query_classes: list[str], ids: list[list[int]] | None) -> dict:
    """Share of dogs / same breed in the top d of each list (mean over queries), distinct ids in the top 5."""
    out: dict = {}
    for d in DEPTHS:
        top = [row[:d] for row in lists]
        out[f"dogs@{d}"] = float(np.mean([np.mean([c in DOGS for c in row]) for row in top]))
        same = [np.mean([c == q for c in row]) for row, q in zip(top, query_classes, strict=True)]
        out[f"breed@{d}"] = float(np.mean(same))
    if ids is not None:
        out["distinct@5"] = len({i for row in ids for i in row[:5]})
    return out


def service_lists(url: str, queries: list[tuple[Path, str]], metric: str, k: int) -> tuple[list, list]:
    classes, ids = [], []
    with httpx.Client(timeout=600) as client:
        for start in range(0, len(queries), 25):
            batch = queries[start : start + 25]
            body = {"queries": [{"id": str(i), "image_b64": base64.b64encode(p.read_bytes()).decode()}
                                for i, (p, _) in enumerate(batch)], "k": k, "metric": metric, "exact": True}
            r = client.post(f"{url}/v1/neighbors", json=body)
            r.raise_for_status()
            for res in r.json()["results"]:
                classes.append([n["class_name"] for n in res["neighbors"]])
                ids.append([n["source_id"] for n in res["neighbors"]])
    return classes, ids


def deep_embeddings(paths: list[Path], weights: Path, size: int, batch: int = 64) -> dict[str, np.ndarray]:
    """L2-normalised pooled features of ``blocks.4`` and of ``conv_head`` (+ bn2) for each image."""
    import timm
    import torch
    from PIL import Image

    from services.backbones import IMAGENET
    from services.weights import load_weights

    state, recorded = load_weights(weights)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    model.load_state_dict(state, strict=True)
    model.eval()
    norm_mean, norm_std = recorded if recorded is not None else IMAGENET  # Lite0's file: mean = std = 0.5
    mean = torch.tensor(norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(norm_std).view(1, 3, 1, 1)
    feats: dict[str, list[torch.Tensor]] = {"deep-blocks4": [], "deep-penultimate": []}

    def load(p: Path) -> torch.Tensor:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1)

    with torch.inference_mode():
        for start in range(0, len(paths), batch):
            x = (torch.stack([load(p) for p in paths[start : start + batch]]) - mean) / std
            x = model.bn1(model.conv_stem(x))
            for i, block in enumerate(model.blocks):
                x = block(x)
                if i == 4:
                    feats["deep-blocks4"].append(x.mean(dim=(2, 3)))
            x = model.bn2(model.conv_head(x))
            feats["deep-penultimate"].append(x.mean(dim=(2, 3)))
    return {k: torch.nn.functional.normalize(torch.cat(v), dim=1).numpy() for k, v in feats.items()}


def deep_lists(emb_q: np.ndarray, emb_s: np.ndarray, source_classes: list[str], k: int) -> tuple[list, list]:
    sims = emb_q @ emb_s.T  # (Q, N) cosine
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return [[source_classes[j] for j in row] for row in order], order.tolist()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--corpus", default="imagenet-source")
    p.add_argument("--queries", default="imagewoof/train", help="query ImageFolder under --data")
    p.add_argument("--service", action="append", default=[], metavar="NAME=URL")
    p.add_argument("--index", action="append", default=[], metavar="NAME=DIR")
    p.add_argument("--metrics", default="js,skl")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--deep", action="store_true", help="also the deep-embedding banks (beyond the paper)")
    p.add_argument("--weights", type=Path, default=REPO / "bench_out/weights/efficientnet_lite0_imagenet.pt")
    p.add_argument("--deep-size", type=int, default=160)
    p.add_argument("--json", type=Path, default=None, help="write the table as JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    queries = images_of(args.data / args.queries)
    sources = images_of(args.data / args.corpus)
    query_classes = [c for _, c in queries]
    source_classes = [c for _, c in sources]
    n = len(sources)
    base = {f"dogs@{d}": sum(c in DOGS for c in source_classes) / n for d in DEPTHS}
    base.update({f"breed@{d}": float(np.mean([source_classes.count(q) / n for q in query_classes]))
                 for d in DEPTHS})
    table = [{"bank": "random (base rate)", "metric": "-", **base, "distinct@5": None, "wall_s": 0.0}]
    with contextlib.ExitStack() as stack:
        urls = dict(s.split("=", 1) for s in args.service)
        for spec in args.index:
            name, folder = spec.split("=", 1)
            log = REPO / "bench_out" / f"retrieval_quality-{name}.server.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            urls[name] = stack.enter_context(live_server(folder, log))
        for name, url in urls.items():
            for metric in args.metrics.split(","):
                t = time.perf_counter()
                classes, ids = service_lists(url, queries, metric, args.k)
                table.append({"bank": name, "metric": metric, **scores(classes, query_classes, ids),
                              "wall_s": time.perf_counter() - t})
                print(json.dumps(table[-1]), flush=True)
    if args.deep:
        t = time.perf_counter()
        emb = deep_embeddings([p for p, _ in queries] + [p for p, _ in sources], args.weights, args.deep_size)
        wall = time.perf_counter() - t
        for name, e in emb.items():
            classes, ids = deep_lists(e[: len(queries)], e[len(queries) :], source_classes, args.k)
            table.append({"bank": f"{name} (beyond the paper)", "metric": "cosine",
                          **scores(classes, query_classes, ids), "wall_s": wall})
            print(json.dumps(table[-1]), flush=True)
    cols = [f"{m}@{d}" for m in ("dogs", "breed") for d in DEPTHS]
    print(f"\n{len(queries)} queries ({args.queries}), {n} sources ({args.corpus}); shares of the top-d")
    print("| bank | metric | " + " | ".join(cols) + " | distinct sources in the top-5 lists | wall s |")
    print("|---|---|" + "---|" * (len(cols) + 2))
    for r in table:
        cells = " | ".join(f"{100 * r[c]:.1f} %" for c in cols)
        print(f"| {r['bank']} | {r['metric']} | {cells} | {r['distinct@5'] or '-'} | {r['wall_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"queries": args.queries, "corpus": args.corpus, "rows": table},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
