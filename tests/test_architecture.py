"""The layout rules of docs/design.md ("Architecture"), checked on the source tree.

Stage packages one level deep, cheap package imports, no private name imported from another module, no
module-level import cycle, and no work-directory file name spelled outside ``autoseg/workdir.py``.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autoseg"
STAGE_PACKAGES = [
    "dataset",
    "planning",
    "preprocessing",
    "training",
    "inference",
    "postprocessing",
    "evaluation",
    "report",
    "dicom",
    "serve",
    "distributed",
    "cli",
]
HEAVY = ("torch", "highdicom", "monai", "matplotlib", "pynetdicom")
WORKDIR_FILES = (
    "fingerprint.json",
    "plans.json",
    "splits.json",
    "configurations.json",
    "preprocessing.json",
    "properties.json",
    "postprocessing.json",
    "best_configuration.json",
    "best_configuration.md",
    "training_reference.json",
    "train_config.json",
    "log.jsonl",
    "training.log",
    "progress.png",
    "foreground.npz",
    "checkpoint_latest.pt",
    "checkpoint_best.pt",
    "checkpoint_final.pt",
)
"""File names of the work directory; only ``autoseg/workdir.py`` may spell them. The exported model zip
(``inference/model_file.py``) has entries of its own format named alike; they are constants there."""


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def test_packages_are_one_level_deep_and_there_is_no_utils() -> None:
    nested = list(PACKAGE.glob("*/*/__init__.py"))
    assert not nested, f"stage packages are one level deep: {nested}"
    assert not list(PACKAGE.rglob("utils*")), "no utils module or package"
    for name in STAGE_PACKAGES:
        init = PACKAGE / name / "__init__.py"
        assert init.is_file(), f"autoseg/{name}/ is a package"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and re.search(r"\b(reads?|writes?)\b", doc, re.I), (
            f"{init}: say what the stage reads and writes"
        )


@pytest.mark.parametrize("name", STAGE_PACKAGES)
def test_every_exported_name_resolves(name: str) -> None:
    module = importlib.import_module(f"autoseg.{name}")
    for exported in module.__all__:
        assert getattr(module, exported) is not None, f"autoseg.{name}.{exported}"


def test_importing_a_stage_package_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        + "".join(f"import autoseg.{name}\n" for name in STAGE_PACKAGES)
        + f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"importing the stage packages loaded {loaded.strip()}"


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom autoseg.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip().splitlines()[-1] == "[]"


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autoseg"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")]
                offenders += [f"{name}: {node.module}.{n}" for n in private]
    assert not offenders, offenders


def test_no_module_level_import_cycle() -> None:
    modules = _modules()
    graph = {
        name: {
            node.module
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module in modules and node.module != name
        }
        for name, tree in modules.items()
    }

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for successor in graph[start]:
            if successor == target or (
                successor not in seen and reaches(successor, target, seen | {successor})
            ):
                return True
        return False

    cycles = sorted(name for name in graph if reaches(name, name, {name}))
    assert not cycles, f"modules in an import cycle: {cycles}"


def test_only_workdir_spells_work_directory_file_names() -> None:
    pattern = re.compile("|".join(re.escape(f'"{name}"') for name in WORKDIR_FILES))
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "workdir.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and not re.match(r"\s*[A-Z_]+ = ", code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "use autoseg.workdir.Workdir:\n" + "\n".join(offenders)


def test_no_module_re_exports_another_modules_names() -> None:
    """A module's ``__all__`` lists what it defines; only a package's ``__init__`` names entry points of its
    modules (no facade modules)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autoseg")
            for alias in node.names
        }
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                assert isinstance(node.value, ast.List | ast.Tuple)
                names = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n in imported]
    assert not offenders, offenders
