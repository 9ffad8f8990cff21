"""Reconcilers: desired state → the ingress rule model, locally (`local`) or on a cluster
(`cluster`)."""
