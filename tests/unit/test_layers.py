"""The layers are a test: which of our modules may import what (an AST read of every import).

- The three services (``agent``, ``scheduler_extender``, ``serving``) never import each other;
  the shared kernel ``locality`` imports none of them.
- Only ``locality.kube`` imports ``kubernetes``; only ``agent.fetch.sources.s3`` imports ``boto3``/
  ``botocore`` (the demo too seeds its bucket through it).
- Cores (identity, the node/pod contract, errors, back-off, JSON bodies, scoring, targets, the
  extender wire format, eviction plans, label diffs, pinning, target specs) import no aiohttp,
  kubernetes, boto3, aiofiles or disk/process I/O modules.
- No import cycles among our modules (function-level imports count: they are cycles too).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("locality", "agent", "scheduler_extender", "serving")
SERVICES = ("agent", "scheduler_extender", "serving")
CORES = (
    "locality.identity",
    "locality.hfuri",
    "locality.units",
    "locality.contract",
    "locality.errors",
    "locality.backoff",
    "locality.jsonbody",
    "scheduler_extender.scoring",
    "scheduler_extender.targets",
    "scheduler_extender.wire",
    "scheduler_extender.specs",
    "scheduler_extender.nodes",
    "scheduler_extender.index",
    "scheduler_extender.injection",
    "scheduler_extender.certs",
    "agent.store.eviction",
    "agent.cluster.labels",
    "agent.cli.render",
)
IO_MODULES = (
    "aiohttp",
    "kubernetes",
    "boto3",
    "botocore",
    "aiofiles",
    "os",
    "shutil",
    "subprocess",
    "socket",
)
ONLY_IN = {
    "kubernetes": ("locality.kube",),
    "boto3": ("agent.fetch.sources.s3",),
    "botocore": ("agent.fetch.sources.s3",),
    "huggingface_hub": ("agent.fetch.sources.hf",),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports (absolute names; ``from x import y`` yields ``x`` and ``x.y``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block) for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue  # ``if TYPE_CHECKING:`` imports are for annotations only, never run
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


MODULES = our_modules()
PACKAGE_INITS = {name for name, path in MODULES.items() if path.name == "__init__.py"}
IMPORTS = {name: set(imports_of(name, path)) for name, path in MODULES.items()}


def top(module: str) -> str:
    return module.split(".", 1)[0]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_services_never_import_each_other(name: str) -> None:
    mine = top(name)
    allowed = {mine, "locality"} if mine in SERVICES else {"locality"}
    crossing = sorted(m for m in IMPORTS[name] if top(m) in PACKAGES and top(m) not in allowed)
    assert not crossing, f"{name} imports {crossing}; move what they share into locality/"


@pytest.mark.parametrize("library", sorted(ONLY_IN))
def test_one_door_per_outside_system(library: str) -> None:
    users = sorted(name for name, imported in IMPORTS.items() if any(top(m) == library for m in imported))
    assert set(users) <= set(ONLY_IN[library]), f"{library} imported by {users}; only {ONLY_IN[library]}"


@pytest.mark.parametrize("name", CORES)
def test_cores_do_no_io(name: str) -> None:
    assert name in MODULES, f"core module {name} is gone: update CORES"
    io = sorted(m for m in IMPORTS[name] if top(m) in IO_MODULES)
    assert not io, f"core {name} imports {io}"
    inward = sorted(m for m in IMPORTS[name] if m in MODULES and m not in CORES and m not in PACKAGE_INITS)
    assert not inward, f"core {name} imports non-core modules {inward}"


def test_no_import_cycles() -> None:
    graph = {name: sorted(m for m in IMPORTS[name] if m in MODULES and m != name) for name in MODULES}
    # A package's __init__ is imported with each of its modules; only edges between files count.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_a_crossing(tmp_path: Path) -> None:
    """The AST reader is not blind: it finds both import forms and relative imports."""
    pkg = tmp_path / "agent"
    pkg.mkdir()
    (pkg / "x.py").write_text(
        "import serving.app\nfrom ..serving import model\nfrom . import y\n"
        "if TYPE_CHECKING:\n    import kubernetes\n"
    )
    found = set(imports_of("agent.x", pkg / "x.py"))
    assert {"serving.app", "serving", "serving.model", "agent", "agent.y"} <= found
    assert "kubernetes" not in found
