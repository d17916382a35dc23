"""Plain-text tables of evaluation results, one column per checkpoint."""
from __future__ import annotations

from typing import Mapping, Sequence, Union

Cell = Union[float, str, None]


def format_cell(value: Cell) -> str:
    """Fractions as percentages with two decimals; strings as they are; None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{100 * value:.2f}"


def format_table(columns: Mapping[str, Mapping[str, Cell]], rows: Sequence[str],
                 title: str = "") -> str:
    """A Markdown table: first column the row names, then one column per checkpoint.

    ``columns`` maps a checkpoint label to {row name: value}; values are fractions (shown
    in %), strings, or missing.
    """
    header = [title] + list(columns)
    body = [[row] + [format_cell(col.get(row)) for col in columns.values()] for row in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "| " + " | ".join([first, *rest]) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([render(header), rule] + [render(line) for line in body])
