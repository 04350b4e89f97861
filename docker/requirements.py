"""Print the pip requirements of the project's extras, for an image's dependency layer.

    python docker/requirements.py service > /tmp/requirements.txt

Reads only pyproject.toml, so the layer that installs them is rebuilt when dependencies change, not when
the source does. Extras that name the project itself (``sjft[core]``) are followed. torch, torchvision and
FAISS are left out: the Dockerfile installs them first, from the index that matches the image (CUDA or CPU
build), and pip must not replace them.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PINNED_BY_THE_IMAGE = ("torch", "torchvision", "faiss-cpu", "faiss-gpu")


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject["project"]
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    seen: set[str] = set()
    out: list[str] = list(project.get("dependencies", []))

    def visit(extra: str) -> None:
        if extra in seen:
            return
        if extra not in optional:
            raise SystemExit(f"error: pyproject.toml has no extra {extra!r} (have: {', '.join(optional)})")
        seen.add(extra)
        for req in optional[extra]:
            self_ref = re.fullmatch(rf"{re.escape(name)}\[([\w,\s-]+)\]", req.strip())
            if self_ref:
                for inner in self_ref.group(1).split(","):
                    visit(inner.strip())
            else:
                out.append(req)

    for extra in extras:
        visit(extra)
    def name_of(req: str) -> str:
        return re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0]

    return [r for r in dict.fromkeys(out) if name_of(r) not in PINNED_BY_THE_IMAGE]


def main(argv: list[str]) -> int:
    pyproject = tomllib.loads(Path("pyproject.toml").read_text())
    print("\n".join(requirements(pyproject, argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
