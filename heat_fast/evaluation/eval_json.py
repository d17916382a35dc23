"""eval.json: every number of an evaluation run and the settings that produced it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from heat_fast._files import atomic_write_text, strict_json


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented standard JSON atomically (temp file + rename, mode 0644
    under the usual umask); NaN and ±inf are written as null, values JSON cannot hold
    (devices, dtypes) as strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, strict_json(payload, indent=1) + "\n")
