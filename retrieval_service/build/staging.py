"""The ``<out>.partial`` directory protocol of a build: ownership, resumption and the atomic commit.

``build_state.json`` in the partial directory holds the fingerprint of the corpus and of every setting that
changes a descriptor; a partial directory with another fingerprint is discarded. ``index.json`` is written
last (after every other file is fsynced): a partial directory with a valid one is complete, so a build killed
after that point only has to drop its scratch files and rename it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from retrieval_service.index.corpus import Corpus
from retrieval_service.index.loaded import fsync_path, verify_checksums
from services.errors import IndexIntegrityError, SJFTError
from services.fileio import atomic_write
from services.spec import DescriptorSpec

log = logging.getLogger("retrieval_service.build.builder")

STATE_FILE = "build_state.json"
REPORT_FILE = "build_report.json"


class BuildError(SJFTError):
    """A build that cannot start or finish: bad source, bad settings, unwritable or occupied output."""

    code = "build_error"


def check_out(out: Path, force: bool) -> None:
    """Refuse an output that is a file, a non-empty non-index directory, or an index without ``force``."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BuildError(f"output {out} exists and is not a directory")
    if (out / "index.json").is_file():
        if not force:
            raise BuildError(f"output {out} already holds an index; pass --force to rebuild it")
    elif any(out.iterdir()):
        raise BuildError(f"output {out} exists, is not empty and is not an index; choose another --out")


def corpus_fingerprint(corpus: Corpus, spec0: DescriptorSpec, settings: dict) -> str:
    """sha256 over the sorted candidates (path, member, size, offset, label), the spec and the settings."""
    digest = hashlib.sha256(
        json.dumps(
            {"spec": spec0.spec_hash, "settings": settings, "kind": corpus.kind, "classes": corpus.classes},
            sort_keys=True,
        ).encode()
    )
    for r in corpus.records:
        digest.update(f"{r.path}\0{r.member}\0{r.nbytes}\0{r.offset}\0{r.label}\n".encode())
    return digest.hexdigest()


def prepare_partial(partial: Path, fingerprint: str, settings: dict) -> None:
    """Create ``partial`` or keep it when it belongs to the same build; start over when it does not."""
    state_path = partial / STATE_FILE
    if partial.exists():
        if _readfingerprint(state_path) == fingerprint:
            return
        # No state file but a finished index.json: the same build, killed between its commit and its rename.
        if not state_path.exists() and _readfingerprint(partial / REPORT_FILE) == fingerprint:
            if is_complete(partial):
                return
        log.warning("discarding %s: it was started for another corpus or other settings", partial)
        shutil.rmtree(partial)
    try:
        (partial / "shards").mkdir(parents=True)
        write_json(state_path, {"fingerprint": fingerprint, "settings": settings})
    except OSError as exc:
        raise BuildError(f"cannot write the output next to {partial.parent}: {exc.strerror or exc}") from exc


def _readfingerprint(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def is_complete(partial: Path) -> bool:
    index_json = partial / "index.json"
    if not index_json.is_file():
        return False
    try:
        verify_checksums(partial, json.loads(index_json.read_text())["checksums"])
    except (IndexIntegrityError, ValueError, KeyError):
        return False
    return True


def commit(partial: Path, out: Path, force: bool) -> None:
    """Drop the scratch files, then rename ``partial`` to ``out`` (replacing an old index under --force)."""
    shutil.rmtree(partial / "shards", ignore_errors=True)
    (partial / STATE_FILE).unlink(missing_ok=True)
    fsync_path(partial)
    old = out.with_name(out.name + ".replaced")
    if out.exists():
        check_out(out, force)
        if (out / "index.json").is_file():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        else:
            out.rmdir()  # empty directory
    os.replace(partial, out)
    fsync_path(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")
