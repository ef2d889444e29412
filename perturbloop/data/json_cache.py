"""Small JSON files in the cache folder, each keyed by the files it was derived from (no pandas, no torch).

The key of an entry hashes each source file's resolved path, size and modification time with the entry's own
words (a format version, options): a changed source gets another key, so a stale entry is never read. A read
that fails (missing, unreadable, malformed) gives None and the caller rebuilds; a write is atomic, and an
unwritable cache only costs the rebuild next time.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from perturbloop.data.registry import cache_dir


def cache_file(sub: str, stem: str, sources: Iterable[Path], *words: str) -> Path:
    """`<cache>/<sub>/<stem>_<key>.json`, the key covering `words` and each source's path, size and mtime
    (OSError when a source is missing)."""
    parts = list(words)
    for p in sources:
        st = p.stat()
        parts.append(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]
    return cache_dir() / sub / f"{stem}_{key}.json"


def read_json(path: Path) -> Any | None:
    """The JSON value in `path`, or None when the file is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any) -> None:
    """Write `value` atomically through a temporary file of its own (processes writing one entry at once
    must not move one another's half-written file); a cache that cannot be written is left as it is."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp",
                                         delete=False) as f:
            tmp = Path(f.name)
            json.dump(value, f)
        tmp.replace(path)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
