"""The placement rule of ``autoseg/errors.py``: every ``AutosegError`` subclass is defined there."""

from __future__ import annotations

import ast
from pathlib import Path

import autoseg.errors

ROOT = Path(__file__).resolve().parents[1]

TEMPORARILY_ELSEWHERE: set[str] = set()
"""Classes still defined outside ``autoseg/errors.py`` while their owners move them; empty when done."""


def _class_definitions() -> list[tuple[str, int, str, set[str]]]:
    """``(file, line, class name, base names)`` of every class in ``autoseg/`` and ``planners/``."""
    found = []
    for path in sorted([*(ROOT / "autoseg").rglob("*.py"), *(ROOT / "planners").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                found.append((str(path.relative_to(ROOT)), node.lineno, node.name, bases))
    return found


def test_every_autoseg_error_is_defined_in_errors_py() -> None:
    classes = _class_definitions()
    errors = {"AutosegError"}
    while True:  # every class deriving, directly or not, from AutosegError
        more = {name for _, _, name, bases in classes if bases & errors} - errors
        if not more:
            break
        errors |= more
    misplaced = [
        f"{path}:{line} {name}"
        for path, line, name, _ in classes
        if name in errors and path != "autoseg/errors.py" and name not in TEMPORARILY_ELSEWHERE
    ]
    assert not misplaced, "define these in autoseg/errors.py and import them: " + ", ".join(misplaced)


def test_the_dicom_package_exports_its_error_from_errors_py() -> None:
    from autoseg.dicom import DicomError

    assert DicomError is autoseg.errors.DicomError
