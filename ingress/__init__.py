"""The ingress rule model shared by every source and the xDS translator."""
