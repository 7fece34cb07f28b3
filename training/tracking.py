"""MLflow records of a training run, written by rank 0 only."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from training.config import LossConfig, TrainConfig


class Tracker:
    """MLflow from rank 0 only; a no-op without a tracking URI."""

    def __init__(self, config: TrainConfig, rank: int, losses: LossConfig):
        self.active = config.tracking_uri is not None and rank == 0
        self.run_id = None
        if self.active:
            import mlflow

            from metrics.tracking import experiment_id, open_client

            experiment = experiment_id(open_client(config.tracking_uri), config.experiment)
            mlflow.set_tracking_uri(config.tracking_uri)
            run = mlflow.start_run(experiment_id=experiment)
            self.run_id = run.info.run_id
            mlflow.set_tags({"eartalk.job": "train", "eartalk.output_uri": config.output,
                             "eartalk.model_version": config.preset})
            mlflow.log_params({k: v for k, v in asdict(config).items() if k != "tracking_uri"})
            mlflow.log_params({f"loss.{k}": v for k, v in losses.to_dict().items()})

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.active:
            import mlflow

            mlflow.log_metrics(values, step=step)

    def artifact(self, path: Path) -> None:
        if self.active:
            import mlflow

            mlflow.log_artifact(str(path))

    def close(self, status: str = "FINISHED") -> None:
        if self.active:
            import mlflow

            mlflow.end_run(status=status)
