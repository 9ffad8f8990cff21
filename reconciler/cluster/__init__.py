"""Cluster mode: KIngress and the endpoints they name, from Kubernetes → the control plane."""
