"""The activator: holds a revision's requests while it has no ready pod, then forwards them."""
