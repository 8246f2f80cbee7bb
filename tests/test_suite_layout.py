"""The suite's own layout rules (docs/testing.md): test modules never import one another nor
edit ``sys.path``, their names are unique (pytest's default import mode needs it), and every
test folder mirrors a package folder."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.processes import ROOT, TESTS

PACKAGE = ROOT / "torchopt_survey"
#: test folders that stand for something other than a package folder
NOT_MIRRORED = {"helpers", "docs"}


def _test_modules() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if p.name.startswith("test_"))


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_test_module_imports_another() -> None:
    test_names = {p.stem for p in _test_modules()}
    offenders = {str(p.relative_to(TESTS)): sorted(m for m in _imported_modules(p)
                                                   if m.split(".")[0] in test_names)
                 for p in _test_modules()}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_no_test_file_edits_sys_path() -> None:
    edits = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"):
                edits.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert not edits, f"sys.path used in {edits}: put shared code in tests/helpers/"


def test_test_module_names_are_unique() -> None:
    seen: dict[str, Path] = {}
    for path in _test_modules():
        assert path.stem not in seen, f"{path} and {seen[path.stem]} share a module name"
        seen[path.stem] = path


def test_test_folders_mirror_package_folders() -> None:
    for folder in sorted(p for p in TESTS.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        parts = folder.relative_to(TESTS).parts
        if parts[0] in NOT_MIRRORED:
            continue
        assert (PACKAGE.joinpath(*parts) / "__init__.py").is_file(), (
            f"tests/{'/'.join(parts)} mirrors no package folder torchopt_survey/{'/'.join(parts)}")
