"""The local runtime: a revision's pods as supervised local processes."""
