"""The imports between a package's modules, read with `ast` from its source files.

Every import counts: module level, inside functions and under TYPE_CHECKING alike, relative
and absolute. Shared by tests/test_layering.py (no cycles) and tests/test_layout.py (no import
of a higher layer); both take the package's folder, so a planted copy under tmp_path is read
the same way as gradcam_fast itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

__all__ = ["import_graph", "imports_of", "module_name", "modules"]


def module_name(path: Path, package_dir: Path) -> str:
    """`gradcam_fast/io/images.py` -> "gradcam_fast.io.images" (a package is its __init__)."""
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package_dir: Path) -> dict[str, Path]:
    """Every module of the package under `package_dir`, by dotted name."""
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The package's modules that module `name` (source `path`) imports anywhere, each with
    the line of its first import. `import a.b.c` names a.b.c's module; `from . import x`
    names the submodule x when there is one."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = targets or [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (from its source alone)."""
    known = modules(package_dir)
    return {name: set(imports_of(name, path, known)) for name, path in known.items()}
