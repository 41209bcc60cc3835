"""The package's shape, read from its import graph with ``ast``: the pure packages import no
controllers and no agent code, controllers do not reach into each other's private names, and no
module grows past what one person can hold in mind."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "operator"
PACKAGE = ROOT / "vmshift"

#: Packages of pure decisions and models: they may import each other, the neutral top-level modules
#: (``vmshift.limits``, ``vmshift.processor``, ``vmshift.drivers``, ...) and libraries, never the
#: controllers (Kopf, the API server) nor the agent (``vmshift.hypervisor``).
PURE = ("vmshift.api", "vmshift.scheduling", "vmshift.conversion", "vmshift.remediation", "vmshift.precopy")
FORBIDDEN_FROM_PURE = ("vmshift.controllers", "vmshift.hypervisor")

MAX_LINES = 600
#: Modules allowed past MAX_LINES for now, each with who removes it from this list.
OVERSIZED: set[str] = set()
#: Public class names defined in two modules for now, each with who removes it from this list.
SHARED_CLASS_NAMES: set[str] = set()


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted
    name: str | None  # the imported name (``from target import name``), None for ``import target``
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def imports(path: Path) -> Iterator[Import]:
    """Every import of ``path``, wherever it stands (top level, inside functions, under TYPE_CHECKING)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(module, base, alias.name, node.lineno)


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def resolved_targets(imp: Import) -> list[str]:
    """The modules an import reaches: ``from vmshift.hypervisor import drivers`` reaches
    ``vmshift.hypervisor`` and ``vmshift.hypervisor.drivers``."""
    targets = [imp.target]
    if imp.name is not None:
        targets.append(f"{imp.target}.{imp.name}")
    return targets


def test_the_graph_is_read_at_all() -> None:
    """A guard for the guards below: the walk finds the package and its known arrows."""
    found = {(i.module, i.target) for path in modules() for i in imports(path)}
    assert ("vmshift.hypervisor.migration.source", "vmshift.precopy.convergence") in found
    assert len(found) > 300


def test_pure_packages_import_no_controllers_and_no_agent() -> None:
    arrows = [
        f"{i.module}:{i.line} imports {i.target}{'.' + i.name if i.name else ''}"
        for path in modules() for i in imports(path)
        if within(i.module, PURE) and any(within(t, FORBIDDEN_FROM_PURE) for t in resolved_targets(i))
    ]
    assert not arrows, ("pure packages must not depend on controllers or the agent; move the shared type to a "
                        "neutral module (vmshift/*.py, vmshift/api, vmshift/precopy):\n" + "\n".join(arrows))


def controller_modules() -> set[str]:
    return {module_name(p) for p in (PACKAGE / "controllers").glob("*.py")}


def private_uses(module: str, source: str, controllers: set[str]) -> list[str]:
    """Where ``module`` (a controller) imports or uses a private name of another controllers module."""
    tree = ast.parse(source)
    found: list[str] = []
    aliases: dict[str, str] = {}  # local name -> the controllers module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                local = alias.asname or alias.name
                if node.module in controllers and node.module != module and alias.name.startswith("_"):
                    found.append(f"{module}:{node.lineno} imports {node.module}.{alias.name}")
                if node.module == "vmshift.controllers" and f"vmshift.controllers.{alias.name}" in controllers:
                    aliases[local] = f"vmshift.controllers.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in controllers:
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):  # ``kubeapi._client()`` after ``from vmshift.controllers import kubeapi``
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = aliases.get(ast.unparse(node.value))
            if owner is not None and owner != module:
                found.append(f"{module}:{node.lineno} uses {owner}.{node.attr}")
    return found


def test_the_private_name_check_sees_imports_and_attributes() -> None:
    controllers = {"vmshift.controllers.kubeapi", "vmshift.controllers.hosts"}
    source = ("from vmshift.controllers import kubeapi\n"
              "from vmshift.controllers.kubeapi import _retry, patch\n\n"
              "def f(self):\n    return kubeapi._client(), kubeapi.patch, self._x, _retry\n")
    assert private_uses("vmshift.controllers.hosts", source, controllers) == [
        "vmshift.controllers.hosts:2 imports vmshift.controllers.kubeapi._retry",
        "vmshift.controllers.hosts:5 uses vmshift.controllers.kubeapi._client",
    ]
    assert private_uses("vmshift.controllers.kubeapi", source.replace("_retry, ", ""), controllers) == []


def test_controllers_do_not_import_each_others_private_names() -> None:
    controllers = controller_modules()
    private = [use for path in sorted((PACKAGE / "controllers").glob("*.py"))
               for use in private_uses(module_name(path), path.read_text(), controllers)]
    assert not private, ("a controller reaches into another's internals; make the name public (and say what it "
                         "is) or move it to a shared module:\n" + "\n".join(private))


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_module_is_over_600_lines() -> None:
    too_long = {str(p.relative_to(ROOT)): line_count(p) for p in modules()}
    too_long = {name: lines for name, lines in too_long.items() if lines > MAX_LINES and name not in OVERSIZED}
    assert not too_long, (f"modules over {MAX_LINES} lines (split each into modules that say what they hold): "
                          f"{too_long}")


def test_the_oversized_list_names_only_modules_that_still_need_it() -> None:
    """An entry whose module shrank (or went away) must leave the list, so the list only ever shrinks."""
    stale = [name for name in OVERSIZED if not (ROOT / name).exists() or line_count(ROOT / name) <= MAX_LINES]
    assert not stale, f"remove from OVERSIZED, they fit now: {stale}"


def test_no_two_public_classes_share_a_name() -> None:
    """A name says what a class is; two classes of one name (an API model and a wire model, say) make
    every import a guess."""
    where: dict[str, list[str]] = {}
    for path in modules():
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(module_name(path))
    shared = {name: places for name, places in where.items() if len(places) > 1 and name not in SHARED_CLASS_NAMES}
    assert not shared, f"public classes defined more than once (rename each to say what it is): {shared}"
    stale = [name for name in SHARED_CLASS_NAMES if len(where.get(name, [])) < 2]
    assert not stale, f"remove from SHARED_CLASS_NAMES, the name is unique now: {stale}"
