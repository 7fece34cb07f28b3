"""Architecture rules the layout promises (docs/ARCHITECTURE.md), enforced by reading the source (AST).

- Nothing imports from jobs/ except jobs/ itself, nor runs a job as a subprocess: entry points stay thin
  and leaf-like, and library code calls the library (tests may import jobs: they drive them as users do).
- model/ is pure PyTorch: no Ray, no storage, no MLflow, no training, pipeline or nightly code.
- media/ and faces/ work on local files only: no Ray, no object storage.
- One storage module: only the `storage` package opens files through fsspec/s3fs, so S3 settings travel
  one way (tests are exempt: they check object storage with their own client, independent of the code).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shipped_packages() -> list[str]:
    """The top-level packages pyproject.toml ships ("model*" -> model), so a new package is covered too."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in patterns})


PACKAGES = shipped_packages()
NON_PACKAGE_CODE = ["benchmarks", "scripts"]


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def imported_modules(path: Path) -> set[str]:
    """Absolute imports, including those inside functions and importlib.import_module("...") calls."""
    names: set[str] = set()
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and call_name(node.func) in ("import_module",
                                                                                   "importlib.import_module",
                                                                                   "__import__")):
            names.add(node.args[0].value)
    return names


def call_name(func: ast.expr) -> str:
    """`a.b.c` for a call target written as a dotted name, else ''."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        return ".".join([func.id, *reversed(parts)])
    return ""


def top(name: str) -> str:
    return name.split(".")[0]


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((REPO / folder).rglob("*.py"))]


def test_the_layout_rules_cover_the_shipped_packages():
    assert {"model", "storage", "pipelines", "jobs", "training", "nightly", "metrics"} <= set(PACKAGES), PACKAGES


def test_nothing_outside_jobs_imports_jobs():
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in python_files(*[p for p in PACKAGES if p != "jobs"], *NON_PACKAGE_CODE)
        for name in imported_modules(path)
        if top(name) == "jobs"
    ]
    assert not offenders, offenders


def module_runs(node: ast.AST) -> str | None:
    """The module of a `[..., "-m", "jobs.x", ...]` command line written as a list or tuple literal."""
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
        for flag, module in zip(values, values[1:]):
            if flag == "-m" and isinstance(module, str):
                return module
    return None


def test_library_code_calls_the_library_instead_of_running_a_job():
    offenders = [
        f"{path.relative_to(REPO)}:{node.lineno} runs python -m {module}"
        for path in python_files(*[p for p in PACKAGES if p != "jobs"], *NON_PACKAGE_CODE)
        for node in ast.walk(parse(path))
        if (module := module_runs(node)) is not None and top(module) == "jobs"
    ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("model", ("ray", "fsspec", "s3fs", "boto3", "mlflow", "storage", "pipelines", "media", "faces", "metrics",
                   "training", "nightly", "jobs")),
        ("media", ("ray", "fsspec", "s3fs", "boto3", "mlflow")),
        ("faces", ("ray", "fsspec", "s3fs", "boto3", "mlflow")),
        # the bottom layer every package may use, so it uses none of them
        ("storage", ("model", "media", "faces", "metrics", "pipelines", "training", "nightly", "jobs", "ray",
                     "mlflow")),
    ],
)
def test_package_stays_within_its_layer(package, forbidden):
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in python_files(package)
        for name in imported_modules(path)
        if top(name) in forbidden
    ]
    assert not offenders, offenders


def test_only_the_storage_package_opens_files_through_fsspec():
    """fsspec.filesystem / fsspec.open / fsspec.core.url_to_fs elsewhere would take S3 settings from the
    environment on whatever machine runs it, not the StorageOptions the driver hands out."""
    offenders = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in python_files(*[p for p in PACKAGES if p != "storage"], *NON_PACKAGE_CODE)
        for name in imported_modules(path)
        if top(name) in ("fsspec", "s3fs")
    ]
    assert not offenders, offenders


def test_every_package_has_a_module_docstring():
    missing = [
        str(path.relative_to(REPO))
        for path in python_files(*PACKAGES)
        if path.stat().st_size > 0 and ast.get_docstring(parse(path)) is None
    ]
    assert not missing, f"modules without a docstring: {missing}"
