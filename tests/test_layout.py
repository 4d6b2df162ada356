"""The package's layout: no import cycles, small files, output keys defined in one place."""

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "spacrd"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Modules of spacrd imported when ``path`` is imported (not in functions, not under TYPE_CHECKING)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("spacrd")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("spacrd"):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def test_no_import_cycles():
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for target in _top_level_imports(path):
            # importing a.b.c runs a, a.b and a.b.c
            parts = target.split(".")
            targets |= {
                ".".join(parts[: i + 1]) for i in range(1, len(parts)) if ".".join(parts[: i + 1]) in files
            }
        graph[name] = targets - {name}
    # a package's own __init__ importing its children is the only allowed way "up"
    cycles = []
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if node.startswith(nxt + "."):  # a submodule importing its package: Python has run it already
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_source_file_is_long():
    lengths = {p.relative_to(SRC): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert max(lengths.values()) <= 450, sorted(lengths.items(), key=lambda kv: -kv[1])[:3]


def test_output_keys_are_written_once():
    """The default output keys appear as string literals only in spacrd._constants."""
    keys = [
        '"ctr_prob"',
        '"ctr_uncertainty"',
        '"spacrd_neighbors"',
        '"X_histology"',
        '"spacrd_annotations"',
        'uns["spacrd"]',
        'uns.get("spacrd"',
    ]
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "_constants.py":
            continue
        code = re.sub(r'""".*?"""', "", path.read_text(), flags=re.S)  # docstrings may name them
        code = "\n".join(line.split("#")[0] for line in code.splitlines())
        offenders += [(path.name, key) for key in keys if key in code]
    assert not offenders, offenders
