"""Helpers for the index-build tests: small corpora in both layouts, with deliberately bad files."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from tests.imagegen import write_image_folder

SMALL = {"size": 32, "batch_size": 4, "shard_size": 8, "edge_sample": 16, "workers": 0, "progress": False}


def add_bad_files(root: Path) -> dict[str, str]:
    """A truncated PNG, a .jpg that is text and an empty file; returns path -> expected skip reason."""
    good = sorted((root / "dots").glob("*.png"))[0].read_bytes()
    (root / "dots" / "dots_zz_truncated.png").write_bytes(good[: len(good) // 2])
    (root / "rings" / "rings_zz_text.JPG").write_text("this is not a JPEG\n")
    (root / "stripes" / "stripes_zz_empty.png").write_bytes(b"")
    return {
        "dots/dots_zz_truncated.png": "truncated",
        "rings/rings_zz_text.JPG": "not a recognised image format",
        "stripes/stripes_zz_empty.png": "empty file",
    }


def image_folder(root: Path, per_class: int = 6, size: int = 40, bad: bool = False) -> Path:
    write_image_folder(root, per_class=per_class, size=size, seed=3)
    if bad:
        add_bad_files(root)
    return root


def folder_to_tars(folder: Path, out: Path, n_tars: int = 2, cls_as: str = "name") -> list[Path]:
    """WebDataset shards of an ImageFolder's candidates: ``<path>`` + ``<path stem>.cls`` members.

    Classes are split over ``n_tars`` tars in sorted order, so candidates come in the folder's order.
    """
    from retrieval_service.index.corpus import enumerate_corpus

    corpus = enumerate_corpus(folder)
    out.mkdir(parents=True, exist_ok=True)
    per_tar = -(-len(corpus.classes) // n_tars)
    tars = []
    for t in range(n_tars):
        path = out / f"shard-{t:03d}.tar"
        with tarfile.open(path, "w") as archive:
            for record in corpus.records:
                if record.label // per_tar != t:
                    continue
                _add(archive, record.path, (folder / record.path).read_bytes())
                cls = record.class_name if cls_as == "name" else str(record.label)
                _add(archive, record.path.split(".", 1)[0] + ".cls", cls.encode())
        tars.append(path)
    return tars


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
