"""Durable file writes: atomic replacement, fsynced appends and strict JSON.

Files get ordinary permissions (0666 less the umask, so 0644 usually). JSON is written as
the standard defines it: NaN and ±inf become ``null`` (Python's ``json`` would write the
non-standard ``NaN`` / ``Infinity``).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

PathLike = Union[str, os.PathLike]
TEMP_SUFFIX = ".tmp"


def atomic_write(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path`` (``.NAME.PID.tmp``), flush it
    to disk, then rename it over ``path``: a crash never leaves a half-written ``path``, and
    a failed write (e.g. a full disk) leaves ``path`` as it was and no temporary file. The
    file gets the mode a plain ``open(path, "w")`` would (unlike ``tempfile.mkstemp``'s 0600)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 ``text``."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def append_line(path: PathLike, line: str) -> None:
    """Append ``line`` and a newline to ``path`` and fsync it, so that after a power cut at
    most the last line is torn (which :func:`read_json_lines` then drops)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def strict_json(value: Any, indent: Optional[int] = None) -> str:
    """Standard JSON of ``value``: non-finite floats as null, other values JSON cannot hold
    (devices, dtypes, paths) as strings."""
    return json.dumps(finite_or_none(value), indent=indent, default=str, allow_nan=False)


def read_json_lines(path: PathLike) -> tuple:
    """(records, torn): the JSON objects of a JSON-lines file, and the unparseable last line
    when a write was cut short (None otherwise). A bad line before the last one raises
    ValueError naming its number: that is damage, not an interrupted append."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        except ValueError as error:
            if number == len(lines):
                return records, line
            raise ValueError(f"{path} line {number} is not a JSON object ({error}): repair or "
                             "delete that line") from None
        records.append(record)
    return records, None
