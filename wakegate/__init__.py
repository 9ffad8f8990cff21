"""wakegate: a Knative-compatible ingress control plane for Envoy."""

__version__ = "0.1.0"
