# The two commands of the README. Both set up a fresh machine first (idempotent).
.PHONY: setup demo test test-fast
setup:
	bash scripts/setup.sh

# Render the embedded default: local Ray, local files, MLflow on sqlite, the shipped checkpoint.
demo: setup
	.venv/bin/eartalk render examples/manifest.jsonl --output out/demo --tracking-uri sqlite:///out/mlflow.db --allow-root /usr/share/codec2/raw

# The full CI suite (real Ray, moto S3 server, MLflow, ffmpeg, Chromium).
test: setup
	.venv/bin/python -m pytest

# The tests that start no service and train nothing (markers in pyproject.toml, set by tests/conftest.py).
test-fast: setup
	.venv/bin/python -m pytest -m "not slow"
