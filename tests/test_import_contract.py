"""The import contract of `pyproject.toml`: layers, independence, no cycles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.import_contract import link_tree, lint

LAYERS = "Layers: wiring, reconcilers, engines, Knative APIs"
INDEPENDENT = "The local and the cluster reconciler are independent"
ACYCLIC = "No import cycles between sibling modules"


def test_the_package_keeps_every_contract(tmp_path: Path) -> None:
    result = lint(link_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (LAYERS, INDEPENDENT, ACYCLIC):
        assert f"{name} KEPT" in result.stdout


def _add_import(tree: Path, module: str, statement: str) -> None:
    """Append `statement` to a copy of `module` (the tree holds links to the sources)."""
    path = tree / "wakegate" / module
    text = path.read_text()
    path.unlink()
    path.write_text(f"{text}\n{statement}  # noqa\n")


@pytest.mark.parametrize(
    ("edges", "broken"),
    [
        # An API importing a reconciler.
        ([("serving/model.py", "import wakegate.reconciler.local.services")], LAYERS),
        # Two engines of one layer importing each other.
        ([("runtime/probes.py", "import wakegate.autoscaler.decider")], LAYERS),
        # Inside the wiring: the local API importing the CLI.
        ([("api.py", "import wakegate.cli")], LAYERS),
        # The cluster reconciler reaching into the local one.
        ([("reconciler/cluster/leader.py", "import wakegate.reconciler.local.store")], INDEPENDENT),
        # A cycle between two modules of one package.
        ([("xds/resources.py", "import wakegate.xds.translate")], ACYCLIC),
    ],
    ids=["api-to-reconciler", "engine-to-engine", "api-to-cli", "cluster-to-local", "cycle"],
)
def test_a_back_edge_breaks_the_contract(
    tmp_path: Path, edges: list[tuple[str, str]], broken: str
) -> None:
    tree = link_tree(tmp_path)
    for module, statement in edges:
        _add_import(tree, module, statement)
    result = lint(tree)
    assert result.returncode != 0
    assert f"{broken} BROKEN" in result.stdout, result.stdout
