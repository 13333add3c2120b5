"""The boundaries of the house, read from the source (ast), so a change that crosses one fails here.

- `storage` imports neither `agent` nor `dreamer`;
- `agent` never imports torch, transformers or peft (the chat stays light);
- nothing the sleep engine reaches (dreamer.sleep, .lm, .eval, .morning, .scheduler), directly
  or through other first-party modules, imports textual;
- no import cycles between first-party modules, lazy (in-function) imports included;
- only `storage` touches the database connection (`store.db`): one way into dreamer.db;
- `dreamer --help` loads none of the heavy libraries.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("storage", "agent", "dreamer")
ENGINE = ("dreamer.sleep", "dreamer.lm", "dreamer.eval", "dreamer.morning", "dreamer.scheduler")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file: first-party ones resolved to modules."""
    named = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                named.add(candidate if candidate in MODULES else node.module)
    return named


GRAPH = {name: imports(path) for name, path in MODULES.items()}


def external(name: str) -> set[str]:
    return {module.split(".")[0] for module in GRAPH[name] if module.split(".")[0] not in PACKAGES}


def test_storage_imports_neither_agent_nor_dreamer():
    crossing = {name: sorted(m for m in GRAPH[name] if m.split(".")[0] in ("agent", "dreamer"))
                for name in GRAPH if name.split(".")[0] == "storage"}
    assert {k: v for k, v in crossing.items() if v} == {}


def test_agent_never_imports_torch_transformers_or_peft():
    heavy = {"torch", "transformers", "peft", "bitsandbytes"}
    assert {name: sorted(external(name) & heavy) for name in GRAPH
            if name.split(".")[0] == "agent" and external(name) & heavy} == {}
    # nor through dreamer: the chat side reaches only storage
    assert {name: sorted(m for m in GRAPH[name] if m.startswith("dreamer")) for name in GRAPH
            if name.startswith("agent") and any(m.startswith("dreamer") for m in GRAPH[name])} == {}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in GRAPH:
            continue
        seen.add(name)
        todo += [m for m in GRAPH[name] if m in GRAPH]
    return seen


def test_nothing_the_sleep_engine_reaches_imports_textual():
    engine = [name for name in GRAPH if name.startswith(ENGINE)]
    assert engine, "no engine modules found: the layout changed"
    offenders = {name: sorted(m for m in reachable(name) if "textual" in external(m)) for name in engine}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycles():
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(m for m in GRAPH[name] if m in GRAPH and m != name):
            if state.get(other) == 1:
                cycles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other, path + [other])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    # a package's __init__ importing its own submodule is not a cycle: the submodule is loaded after it
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert cycles == []


def test_only_storage_touches_the_database_connection():
    touching = []
    for name, path in MODULES.items():
        if name.split(".")[0] == "storage":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "db" and isinstance(node.value, ast.Name) \
                    and node.value.id in ("store", "self"):
                touching.append(f"{name}:{node.lineno}")
    assert touching == []


def test_help_loads_no_heavy_library():
    # (numpy is not in the list: sqlite-utils imports it whenever it is installed.)
    code = ("import sys; from dreamer.cli.main import cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'textual', 'llama_cpp', 'gguf') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
