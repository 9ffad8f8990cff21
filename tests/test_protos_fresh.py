"""The generated code under protos/gen is what `make protos` makes of protos/ now."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
GENERATED = PROTOS / "gen"


def _generated_files(base: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(base)): p.read_bytes()
        for p in sorted(base.rglob("*.py*"))
        if p.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"))
    }


def test_generated_protos_are_fresh(tmp_path: Path) -> None:
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.glob("wakegate/proto/v1/*.proto"))
    assert sources, "no .proto files under protos/wakegate/proto/v1"
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        *(str(PROTOS / s) for s in sources),
    ]
    assert protoc.main(args) == 0, "protoc failed"
    fresh = _generated_files(tmp_path)
    committed = _generated_files(GENERATED)
    assert fresh, "protoc generated nothing"
    stale = sorted(
        name for name in fresh.keys() | committed.keys() if fresh.get(name) != committed.get(name)
    )
    if stale:
        pytest.fail(f"stale generated code (run `make protos`): {', '.join(stale)}")


def test_generated_package_imports() -> None:
    from wakegate.proto.v1 import autoscaler_pb2, autoscaler_pb2_grpc

    assert autoscaler_pb2.DESCRIPTOR.package == "wakegate.proto.v1"
    assert hasattr(autoscaler_pb2_grpc, "AutoscalerServicer")
    assert sys.modules["wakegate.proto.v1.autoscaler_pb2"] is autoscaler_pb2
