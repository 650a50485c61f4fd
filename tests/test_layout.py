"""The house rules of the layout: arrows point one way, old names still import, modules stay small."""

import ast
import pickle
import warnings
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pfedest"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from ... import`` of a pfedest module in ``path`` (at any depth)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("pfedest"):
                found.append((target, [a.name for a in node.names]))
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_no_import_circle_at_module_level():
    graph = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        deps = set()
        for node in tree.body:  # module level: what importing the module imports
            if isinstance(node, ast.ImportFrom):
                level_imports = imports(path)
                deps |= {t for t, _ in level_imports if t in MODULES and t != name}
        graph[name] = {d for d in deps if not name.startswith(d + ".")}  # a package's __init__ is not a cycle
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            pytest.fail(f"import circle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node in seen:
            return
        stack.append(node)
        for dep in graph.get(node, ()):
            visit(dep)
        stack.pop()
        seen.add(node)

    for node in graph:
        visit(node)


def test_the_core_knows_neither_the_estimator_nor_flower():
    for name, path in MODULES.items():
        if name.startswith("pfedest.core"):
            targets = {t for t, _ in imports(path)}
            assert not {t for t in targets if not t.startswith("pfedest.core")}, (name, targets)


def test_no_module_imports_another_modules_private_names():
    for name, path in MODULES.items():
        for target, names in imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target in ("pfedest", "pfedest._moved", "pfedest._files") or target == name:
                continue
            assert not private, f"{name} imports {private} from {target}"


def test_no_module_is_over_600_lines():
    long = {name: n for name, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


@pytest.mark.parametrize("old, new", [("pfedest.engine", "pfedest.core.engine"),
                                      ("pfedest.splits", "pfedest.nn.splits"),
                                      ("pfedest.report", "pfedest.evaluation.report"),
                                      ("pfedest.problems", "pfedest.theory")])
def test_old_module_names_still_import_with_a_future_warning(old, new):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=f"{old} has moved to {new}"):
        moved = importlib.import_module(old)
    target = importlib.import_module(new)
    public = [n for n in dir(target) if not n.startswith("_")]
    assert public and all(getattr(moved, n) is getattr(target, n) for n in public)


def test_a_pickle_naming_an_old_module_loads():
    from pfedest.nn.splits import HeadSplit

    data = pickle.dumps(HeadSplit(), protocol=0).replace(b"pfedest.nn.splits", b"pfedest.splits")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert type(pickle.loads(data)) is HeadSplit
