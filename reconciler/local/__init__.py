"""The local serving reconciler: Knative Services kept in SQLite → pods, routes, status."""
