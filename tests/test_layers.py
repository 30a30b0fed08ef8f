"""Import arrows point only downward, across the layers of ``src/budgetsft`` (read from the code with ``ast``).

Every import counts, at module level or inside a function: a lazy import is
still an arrow. A new top-level module or package must be given a layer here.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "budgetsft"

# Lowest first. A module may import from its own layer and the layers below it, never from one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("foundation", {"exceptions", "_validation", "_math", "data"}),
    ("numpy core", {"base", "budget", "learners", "gates", "followers", "envs", "game", "regret", "comparator",
                    "config", "refit"}),
    ("features", {"features"}),
    ("experiments", {"realdata", "experiment", "plots"}),
    ("sessions and backends", {"sessions", "ray_backend", "labelstudio", "labelstudio_sync"}),
    ("adapt", {"adapt"}),
    ("command line", {"cli", "__main__"}),
]
LAYER_OF = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}


def _module_name(path: Path) -> str:
    parts = ("budgetsft", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The longest module of the tree that ``name`` (a module or ``module.attribute``) names, if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, target module) for every budgetsft module that ``source`` imports, at any depth of its code."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # ``from budgetsft import _math`` imports the module budgetsft._math, not only the package.
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("budgetsft") else None
            if target is not None and target != "budgetsft":
                out.append((node.lineno, target))
    return out


def _layer(module: str) -> int:
    top = module.split(".")[1]
    assert top in LAYER_OF, f"{module} is in no layer: add {top!r} to LAYERS in tests/test_layers.py"
    return LAYER_OF[top]


def _graph() -> dict[str, set[str]]:
    return {m: {t for _, t in imports_of(p.read_text(encoding="utf-8"), m, p.name == "__init__.py")}
            for m, p in MODULES.items()}


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every import of ``source`` (the code of ``module``) that points to a higher layer, as a message."""
    mine = _layer(module)
    return [f"{module}:{line} imports {target} ({LAYERS[_layer(target)][0]}, above {LAYERS[mine][0]})"
            for line, target in imports_of(source, module, is_package) if _layer(target) > mine]


def test_every_module_is_in_a_layer():
    tops = {m.split(".")[1] for m in MODULES if m != "budgetsft"}
    assert tops <= set(LAYER_OF), f"modules in no layer: {sorted(tops - set(LAYER_OF))}"


def test_imports_point_only_downward():
    bad = [msg for m, p in MODULES.items() if m != "budgetsft"
           for msg in upward_imports(m, p.read_text(encoding="utf-8"), p.name == "__init__.py")]
    assert bad == []


def test_an_upward_import_is_caught():
    # What the check above reports for a wrong arrow, here one from the numpy core up to sessions/.
    code = "def f():\n    from budgetsft.sessions.ledger import Ledger\n    from budgetsft import cli\n"
    assert upward_imports("budgetsft.gates.llf", code) == [
        "budgetsft.gates.llf:2 imports budgetsft.sessions.ledger (sessions and backends, above numpy core)",
        "budgetsft.gates.llf:3 imports budgetsft.cli (command line, above numpy core)",
    ]
    assert upward_imports("budgetsft.gates.llf", "from .. import budget\nfrom . import _common\n") == []
    assert upward_imports("budgetsft.game", "from budgetsft import features\n") == [
        "budgetsft.game:1 imports budgetsft.features (features, above numpy core)"]


def test_the_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return [*path[path.index(t):], t] if t in path else [*path, t]
            if t not in state and (cycle := visit(t, [*path, t])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m, [m])):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_features_base_imports_no_concrete_featurizer():
    # features/base.py holds the registry by name ("module:Class"); the featurisers import it, not the reverse.
    assert not {t for t in _graph()["budgetsft.features.base"] if t.startswith("budgetsft.features.")}
    watched = ("budgetsft.features.causal", "budgetsft.features.encoder", "budgetsft.features.block",
               "budgetsft.features.models", "torch", "transformers")
    code = (f"import sys\nimport budgetsft.features.base as b\nwatched = {watched!r}\n"
            "print([m for m in watched if m in sys.modules])\n"
            "b.make_featurizer('block', labels=('a', 'b'), progress=False)\n"  # builds without loading a model
            "print([m for m in watched if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "['budgetsft.features.encoder', 'budgetsft.features.block']"]


def test_sessions_package_exports_each_module_public_names():
    import budgetsft.sessions as sessions

    for module in ("ledger", "session", "oracles"):
        mod = importlib.import_module(f"budgetsft.sessions.{module}")
        for name in mod.__all__:
            assert getattr(sessions, name) is getattr(mod, name), name
    expected = {n for m in ("ledger", "session", "oracles", "web") for n in _all_of(SRC / "sessions" / f"{m}.py")}
    assert set(sessions.__all__) == expected == set(sessions._LAZY)
    with pytest.raises(AttributeError):
        sessions.nothing_here  # noqa: B018


def _all_of(path: Path) -> list[str]:
    """A module's ``__all__``, read without importing it (web.py needs the optional Starlette)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{path} has no __all__")


def test_importing_sessions_is_cheap():
    code = ("import sys\nimport budgetsft.sessions\n"
            "print(sorted(m for m in sys.modules if m.startswith(('budgetsft.sessions.', 'starlette', 'torch'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _private_imports() -> list[str]:
    """``from budgetsft.x import _name`` where x is another module: a private name crossing a module boundary.

    A private *module* (``budgetsft._math``) is shared on purpose; its names may be imported. Dunder names
    (``__version__``) are public.
    """
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("budgetsft"):
                continue
            if node.module == name:
                continue
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and f"{node.module}.{alias.name}" not in MODULES:
                    found.append(f"{path.relative_to(SRC.parent)}:{node.lineno}: {alias.name} from {node.module}")
    return found


def test_no_module_imports_another_modules_private_names():
    assert _private_imports() == []


def test_the_private_import_check_can_fail(tmp_path):
    tree = ast.parse("from budgetsft.game import _secret\nfrom budgetsft import _math\n")
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert names == ["_secret", "_math"]
    assert "budgetsft._math" in MODULES and "budgetsft.game._secret" not in MODULES
