#!/usr/bin/env sh
# Regenerates ping_pb2.py and ping_pb2_grpc.py from ping.proto; run from anywhere.
set -eu
cd "$(dirname "$0")/../.."
exec .venv/bin/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \
  tests/backends/ping.proto
