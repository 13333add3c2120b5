"""How a result file reads in docs/BENCHMARKS.md: the machine line and a Markdown table."""

from __future__ import annotations


def machine_line(record: dict) -> str:
    machine = record["machine"]
    load = f", load {machine['load_at_start']:.1f} at the start" if "load_at_start" in machine else ""
    commit = f", code {record['commit']}" if record.get("commit") else ""
    return f"{machine['cpu']}, {machine['cores']} cores{load}{commit}"


def table(columns: list[str], rows: list[list]) -> list[str]:
    """A Markdown table; a column whose title starts with "#" is right-aligned (the "#" is dropped)."""
    lines = ["| " + " | ".join(c.lstrip("#") for c in columns) + " |",
             "|" + "|".join("---:" if c.startswith("#") else "---" for c in columns) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
