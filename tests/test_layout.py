"""Architecture rules the layout promises (docs/ARCHITECTURE.md), enforced by reading the source.

- Nothing imports from jobs/ except jobs/ itself (entry points stay thin and leaf-like).
- model/ is pure PyTorch: no Ray, no storage, no MLflow.
- media/ and faces/ work on local files only: no Ray, no object storage.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["model", "media", "faces", "metrics", "pipelines", "training", "nightly", "jobs"]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def python_files(*packages: str) -> list[Path]:
    return [p for pkg in packages for p in sorted((REPO / pkg).rglob("*.py"))]


def test_nothing_outside_jobs_imports_jobs():
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in python_files(*[p for p in PACKAGES if p != "jobs"], "benchmarks")
        for name in imported_modules(path)
        if name == "jobs" or name.startswith("jobs.")
    ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("model", ("ray", "fsspec", "s3fs", "boto3", "mlflow", "pipelines", "media", "faces", "metrics")),
        ("media", ("ray", "fsspec", "s3fs", "boto3", "mlflow")),
        ("faces", ("ray", "fsspec", "s3fs", "boto3", "mlflow")),
    ],
)
def test_package_stays_within_its_layer(package, forbidden):
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in python_files(package)
        for name in imported_modules(path)
        if name.split(".")[0] in forbidden
    ]
    assert not offenders, offenders


def test_every_package_has_a_module_docstring():
    missing = [
        str(path.relative_to(REPO))
        for path in python_files(*PACKAGES)
        if path.stat().st_size > 0 and ast.get_docstring(ast.parse(path.read_text())) is None
    ]
    assert not missing, f"modules without a docstring: {missing}"
