"""Benchmarks: each prints its figures next to a baseline measured in the same run."""

from __future__ import annotations

import argparse


def command_line(name: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of `python -m bench.NAME`: its help is `doc`, the benchmark's docstring,
    as written."""
    return argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
