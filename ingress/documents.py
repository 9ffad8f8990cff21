"""Multi-document YAML (or JSON) text → documents, with libyaml's parser when PyYAML has it.

libyaml reads the same documents as PyYAML's own parser (a safe loader: plain data,
no tags that build objects) about ten times faster, which is most of the time an apply
of a thousand Services in one file takes. Syntax errors are `yaml.YAMLError`s with a
`problem_mark` either way.
"""

from __future__ import annotations

from collections.abc import Iterator

import yaml

SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_all(text: str | bytes) -> Iterator[object]:
    """Each document of `text`, empty ones as None (as `yaml.safe_load_all`)."""
    return yaml.load_all(text, Loader=SAFE_LOADER)
