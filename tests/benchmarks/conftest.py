"""Loads a benchmark script as a module: benchmarks/ is a folder of scripts, not a package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the scripts import each other by file name (gpu imports streaming, pipeline)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def streaming_bench():
    return load_benchmark("streaming")


@pytest.fixture(scope="session")
def gpu_bench():
    return load_benchmark("gpu")
