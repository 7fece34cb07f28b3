"""`eartalk render`'s GPU preflight: a machine that can never give an actor its GPUs is refused with exit 2; a
cluster that autoscales (KubeRay's GPU workers start at 0 replicas) is left to add them while the actors wait."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.render import gpu_shortfall
from jobs.render import main as render_main

REPO = Path(__file__).resolve().parents[2]
KUBERAY = "RAY_USAGE_STATS_KUBERAY_IN_USE"


@pytest.fixture
def more_gpus_than_here(ray_local, monkeypatch) -> float:
    """A --gpus-per-actor the local Ray lacks (one GPU more than it has), on a cluster that does not autoscale."""
    import ray

    monkeypatch.delenv(KUBERAY, raising=False)
    return ray.cluster_resources().get("GPU", 0) + 1


def test_local_ray_without_the_gpus_or_an_autoscaler_is_a_usage_error(more_gpus_than_here, tmp_path, capsys):
    code = render_main([str(REPO / "examples" / "manifest.jsonl"), "--output", str(tmp_path / "o"),
                        "--gpus-per-actor", f"{more_gpus_than_here:g}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "eartalk render: error: --gpus-per-actor" in err and "no autoscaler to add any" in err, err
    assert not (tmp_path / "o").exists()


def test_kuberay_cluster_without_gpus_yet_waits_for_its_autoscaler(more_gpus_than_here, monkeypatch, caplog):
    monkeypatch.setenv(KUBERAY, "1")  # what KubeRay sets in the head container a `ray job submit` driver runs in
    with caplog.at_level("WARNING", logger="eartalk.render"):
        assert gpu_shortfall(more_gpus_than_here) is None
    assert "waiting for KubeRay's autoscaler" in caplog.text
