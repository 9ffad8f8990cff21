"""Real backend programs that the ingress tests start as processes.

``echo.py`` is the backend; ``ping_pb2.py`` and ``ping_pb2_grpc.py`` are generated from
``ping.proto`` by ``tests/backends/gen.sh``, which runs, from the repository root:

    .venv/bin/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. \\
        tests/backends/ping.proto
"""
