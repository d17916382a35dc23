"""eval.json: every number of an evaluation run and the settings that produced it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from heat_fast._files import atomic_write_text


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON atomically (temp file + rename, mode 0644 under the
    usual umask); values JSON cannot hold (devices, dtypes) are written as strings."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(payload, indent=1, default=str) + "\n")
