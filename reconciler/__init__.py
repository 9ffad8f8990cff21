"""Desired state (KIngress objects, Knative Services) → the ingress rule model."""
