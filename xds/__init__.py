"""Ingress rules → Envoy resources → versioned snapshots → the ADS gRPC server.

This folder is imported as `wakegate.xds`. When the repository root is on
`sys.path` it would also shadow the `xds` package of xds-protos, which the Envoy
protos import; extending `__path__` keeps those subpackages importable.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
