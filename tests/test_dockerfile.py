"""The container image's build steps without a container engine (none runs here).

The Dockerfile copies a chosen set of folders and `pip install`s them. These tests
repeat that from exactly the COPY set: a folder the package needs but the image does
not copy, or a module that only imports from the repository checkout, fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def copied_sources() -> list[str]:
    sources: list[str] = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words and words[0] == "COPY" and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    return sources


def package_folder(package: str, package_dir: dict[str, str]) -> Path:
    """Where setuptools finds `package`: its own mapping, or its nearest mapped parent's."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:i]))
        if mapped is not None:
            return Path(mapped, *parts[i:])
    return Path(*parts)


def test_every_package_folder_is_copied_into_the_image() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = {Path(source).parts[0] for source in copied_sources()}
    for package in config["packages"]:
        folder = package_folder(package, config["package-dir"])
        assert (ROOT / folder / "__init__.py").exists(), f"{package}: no {folder}/__init__.py"
        assert folder.parts[0] in copied, f"{package} lives in {folder}/, not copied"
    assert {"pyproject.toml", "README.md"} <= copied


def test_the_image_context_builds_a_package_that_runs_the_controller(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in copied_sources():
        src = ROOT / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, context / source)

    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels = tmp_path / "wheels"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(context)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("wakegate-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)

    env = {**os.environ, "PYTHONPATH": str(site)}
    imports = (
        "import importlib, pkgutil, wakegate\n"
        "for m in pkgutil.walk_packages(wakegate.__path__, 'wakegate.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(wakegate.__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", imports], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(site)), out.stdout

    # The live view's page, script and stylesheet are package data of `wakegate`.
    for asset in ("index.html", "app.js", "style.css"):
        assert (site / "wakegate" / "ui" / asset).is_file(), f"wakegate/ui/{asset} not installed"

    script = site / "bin" / "wakegate"
    assert script.exists()
    help_out = subprocess.run(
        [sys.executable, str(script), "controller", "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert help_out.returncode == 0, help_out.stderr
    assert "--kubeconfig" in help_out.stdout or "kubeconfig" in help_out.stdout
