"""Check the import contract in `pyproject.toml` with import-linter.

The repository's top-level folders are mapped into the one `wakegate` package by
`[tool.setuptools.package-dir]`, which import-linter (it walks the package's folder)
cannot follow. So the check runs against a tree of symbolic links laid out as the
installed package is, built from that mapping in a temporary folder.

    python -m tests.support.import_contract      # exit 0 when every contract is kept
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def link_tree(target: Path) -> Path:
    """Lay out every module of the `wakegate` package under `target` as symlinks."""
    mapping = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in mapping.items():
        source = ROOT / folder
        for path in source.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            link = target / package.replace(".", "/") / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(path)
    return target


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the package laid out in `tree`; output is captured."""
    command = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(command), str(PYPROJECT), "--no-cache"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        check=False,
    )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="wakegate-imports-") as folder:
        result = lint(link_tree(Path(folder)))
    report = result.stdout[result.stdout.find("Contracts") :] if result.stdout else ""
    print(report.strip() or result.stdout, result.stderr, sep="\n", end="")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
