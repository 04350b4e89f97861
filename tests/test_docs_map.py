"""The folder table is the map: every package folder of the code has its row in README.md's table and its
line in docs/ARCHITECTURE.md's tree, and the map names no folder that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "retrieval_service", "trainer", "sjft")


def package_folders() -> set[str]:
    return {
        str(init.parent.relative_to(ROOT))
        for package in PACKAGES
        for init in (ROOT / package).rglob("__init__.py")
        if "static" not in init.parts
    }


def test_readme_folder_table_lists_every_package_folder():
    rows = set(re.findall(r"^\| `([\w/]+)/` \|", (ROOT / "README.md").read_text(), re.M))  # `folder/` rows
    # One row per top-level package or per folder inside it (deeper folders belong to their parent's row).
    missing = {
        f for f in package_folders()
        if f.count("/") <= 1 and f not in rows and not any(r.startswith(f + "/") for r in rows)
    }
    assert not missing, f"folders without a row in README.md's table: {sorted(missing)}"
    gone = {r for r in rows if not (ROOT / r).is_dir()}
    assert not gone, f"README.md's table names folders that do not exist: {sorted(gone)}"


def test_architecture_tree_names_every_trainer_folder():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for folder in package_folders():
        if folder.startswith(("trainer/", "retrieval_service/")) and folder.count("/") == 1:
            assert f"  {folder.split('/')[1]}/" in text, f"{folder} is not in docs/ARCHITECTURE.md's tree"
