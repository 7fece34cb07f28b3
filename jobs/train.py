"""`eartalk train`: build (or read) a training data set and train the generator's two stages.

A local CPU run (the shipped `tiny` checkpoint's exact commands are in docs/model-card-tiny.md):

    eartalk train --dataset synthetic --preset tiny --output out/train-tiny --seed 0 \\
        --vae-steps 320 --steps 900 --tracking-uri sqlite:///out/mlflow.db --install out/tiny

On a Ray cluster (one GPU worker; the job builds the synthetic data set on the worker):

    ray job submit --working-dir . -- python -m jobs.train --dataset synthetic --preset base \\
        --output s3://bucket/runs/base-001 --deepspeed-config configs/train/gpu_bf16_zero2.json \\
        --tracking-uri http://mlflow:5000

Several GPUs on one node, through the DeepSpeed launcher (each rank draws its own batches):

    deepspeed --num_gpus 8 --module jobs.train --dataset /data/shards --output s3://bucket/runs/base-002 \\
        --deepspeed-config configs/train/gpu_bf16_zero2.json

`--dataset` is `synthetic` (built under OUTPUT/dataset, deterministic from --seed) or a shard
folder written by `eartalk prepare` / an earlier synthetic build. The launcher passes each process
`--local_rank=N`; it is accepted and ignored, since the rank comes from its LOCAL_RANK/RANK environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import storage

log = logging.getLogger("eartalk.train")
# flags that set a training.config.LossConfig field of the same name (None: the default, or on resume the run's)
LOSS_FLAGS = ("history_noise", "self_forcing", "control_dropout", "change_weight", "mouth_weight",
              "mouth_concordance_weight", "sync_weight", "vae_region_weight", "vae_blink_weight")
# flags that set a model.GeneratorConfig field of the same name (None: the preset's, or on resume the run's)
MODEL_FLAGS = ("head", "flow_width", "flow_layers", "flow_steps", "flow_noise_std")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="eartalk train", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="'synthetic' or a training-shard folder")
    p.add_argument("--output", required=True, help="run output: local folder, file:// or s3:// URI")
    p.add_argument("--preset", default="tiny", help="model preset (model.get_preset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=200, help="stage 1 (frame VAE) optimizer steps")
    p.add_argument("--steps", type=int, default=400, help="stage 2 (SFA transformer) optimizer steps")
    p.add_argument("--batch-clips", type=int, default=2, help="clips per stage 2 micro-batch")
    p.add_argument("--vae-batch-frames", type=int, default=16, help="frames per stage 1 micro-batch")
    p.add_argument("--clip-frames", type=int, default=24, help="frames per stage 2 training window")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--history-noise", type=float, default=None,
                   help="noise on the teacher-forced history, x latent std (LossConfig.history_noise)")
    p.add_argument("--self-forcing", type=float, default=None,
                   help="share of clips trained on the model's own rollout as history (LossConfig.self_forcing)")
    p.add_argument("--control-dropout", type=float, default=None,
                   help="probability that a control is hidden for a whole clip (LossConfig.control_dropout)")
    p.add_argument("--change-weight", type=float, default=None,
                   help="weight of the loss on frame-to-frame change (LossConfig.change_weight)")
    p.add_argument("--mouth-weight", type=float, default=None,
                   help="weight of the loss on the mouth and chin's latent cells (LossConfig.mouth_weight)")
    p.add_argument("--mouth-concordance-weight", type=float, default=None,
                   help="weight of 1 - the concordance of the mouth cells' motion with the target's "
                        "(LossConfig.mouth_concordance_weight)")
    p.add_argument("--sync-weight", type=float, default=None,
                   help="weight of the expert sync loss: a frozen sync network judges the decoded predicted "
                        "mouths against their speech (LossConfig.sync_weight; regression head only)")
    p.add_argument("--sync-expert", default=None,
                   help="folder of the sync network --sync-weight judges with (python -m metrics.sync_net "
                        "trains one; default the shipped metrics/sync_weights)")
    p.add_argument("--vae-region-weight", type=float, default=None,
                   help="stage 1: weight of the squared error on the eyes' and mouth's pixels (LossConfig.vae_region_weight)")
    p.add_argument("--vae-blink-weight", type=float, default=None,
                   help="stage 1: weight of the loss reading the blink label from the latent's eye cells "
                        "(LossConfig.vae_blink_weight; needs the lid layer, which the tiny preset has)")
    p.add_argument("--closed-eye-share", type=float, default=0.0,
                   help="stage 1: share of frames drawn from the data set's closed-eye frames (blinks are rare)")
    p.add_argument("--vae-decoder-only", action="store_true",
                   help="stage 1 trains the VAE decoder only, keeping the latent space an --init-from transformer "
                        "learned in")
    p.add_argument("--deepspeed-config", default=None, help="DeepSpeed JSON (default configs/train/cpu_fp32.json)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="global steps between checkpoints")
    p.add_argument("--no-resume", action="store_true", help="ignore OUTPUT/checkpoints/LATEST")
    p.add_argument("--init-from", default=None,
                   help="fine-tune: start a fresh run from this model checkpoint's weights (path or URI)")
    p.add_argument("--audio-level", action="store_true",
                   help="give the audio encoder each mel frame's level (GeneratorConfig.audio_level); with "
                        "--init-from a checkpoint without it, its audio input grows")
    p.add_argument("--audio-mouth", action="store_true",
                   help="add a direct path from the audio tokens to the mouth's latent cells "
                        "(GeneratorConfig.audio_mouth); with --init-from a checkpoint without it, it grows at zero")
    p.add_argument("--vae-lid-layer", action="store_true",
                   help="give the VAE decoder its lid layer (GeneratorConfig.vae_lid_layer; the tiny preset has it); "
                        "with --init-from a checkpoint without it, it grows blended in at almost zero")
    p.add_argument("--head", choices=("regression", "flow"), default=None,
                   help="output head (GeneratorConfig.head; default the preset's): 'flow' samples each frame "
                        "token's latent with a flow-matching MLP; with --init-from a regression checkpoint, "
                        "everything but the head is taken from it and the flow head starts fresh")
    p.add_argument("--flow-width", type=int, default=None, help="flow head's MLP width (GeneratorConfig.flow_width)")
    p.add_argument("--flow-layers", type=int, default=None,
                   help="flow head's adaLN blocks (GeneratorConfig.flow_layers)")
    p.add_argument("--flow-steps", type=int, default=None,
                   help="flow head's Euler steps per frame when sampling (GeneratorConfig.flow_steps)")
    p.add_argument("--flow-noise-std", type=float, default=None,
                   help="std of the noise the flow path starts from (GeneratorConfig.flow_noise_std)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (e.g. sqlite:///out/mlflow.db)")
    p.add_argument("--experiment", default="eartalk-train")
    p.add_argument("--max-minutes", type=float, default=None, help="stop stage 2 after this wall time")
    p.add_argument("--synthetic-clips", type=int, default=192, help="clips in a synthetic data set")
    p.add_argument("--install", default=None, help="also copy the final checkpoint to this local folder")
    # passed by the DeepSpeed launcher to every process; the rank is read from LOCAL_RANK/RANK instead
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from model.config import ConfigError
    from training.checkpointing import copy_checkpoint
    from training.config import DEFAULT_DEEPSPEED_CONFIG, TrainConfig
    from training.loops import train

    # S3 settings are read once and handed to each storage call, the way the render driver does
    options = storage.StorageOptions.from_env()

    # preflight: fail fast on inputs that cannot work, before anything is written; TrainConfig checks
    # every value, and its error names the field, which is written here as the flag that sets it
    model_overrides = {name: True for name in ("audio_level", "audio_mouth", "vae_lid_layer") if getattr(args, name)}
    model_overrides.update({name: getattr(args, name) for name in MODEL_FLAGS if getattr(args, name) is not None})
    loss_overrides = {name: getattr(args, name) for name in LOSS_FLAGS if getattr(args, name) is not None}
    ds_config = Path(args.deepspeed_config or DEFAULT_DEEPSPEED_CONFIG)
    try:
        config = TrainConfig(dataset=args.dataset, output=args.output, preset=args.preset, seed=args.seed,
                             model_overrides=model_overrides, loss_overrides=loss_overrides,
                             vae_steps=args.vae_steps, steps=args.steps, batch_clips=args.batch_clips,
                             vae_batch_frames=args.vae_batch_frames, clip_frames=args.clip_frames, lr=args.lr,
                             vae_lr=args.vae_lr, vae_decoder_only=args.vae_decoder_only,
                             deepspeed_config=str(ds_config), closed_eye_share=args.closed_eye_share,
                             checkpoint_every=args.checkpoint_every, resume=not args.no_resume,
                             tracking_uri=args.tracking_uri, experiment=args.experiment,
                             max_minutes=args.max_minutes, init_from=args.init_from, sync_expert=args.sync_expert)
    except ConfigError as e:
        print(f"eartalk train: {e.naming(lambda name: '--' + name.replace('_', '-'))}", file=sys.stderr)
        return 2
    if args.synthetic_clips < 1:  # training.synthetic.SyntheticConfig's own check is an assert
        print(f"eartalk train: --synthetic-clips must be >= 1, got {args.synthetic_clips}", file=sys.stderr)
        return 2
    if not ds_config.is_file():
        print(f"eartalk train: DeepSpeed config {ds_config} does not exist", file=sys.stderr)
        return 2
    if args.dataset != "synthetic" and not (Path(args.dataset) / "dataset.json").is_file():
        print(f"eartalk train: {args.dataset} is neither 'synthetic' nor a shard folder with dataset.json",
              file=sys.stderr)
        return 2
    if config.fresh_losses().sync_weight > 0 or args.sync_expert:
        from metrics import sync_net

        try:
            sync_net.load(args.sync_expert or sync_net.SHIPPED)
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"eartalk train: --sync-expert {args.sync_expert or sync_net.SHIPPED} is not a sync network: {e}",
                  file=sys.stderr)
            return 2
    if args.init_from:
        problem = _init_from_problem(args.init_from, args.preset, config.model_config(), options)
        if problem:
            print(f"eartalk train: --init-from {args.init_from} {problem}", file=sys.stderr)
            return 2
    started = time.monotonic()
    dataset = args.dataset
    if dataset == "synthetic":
        if "://" in args.output and not args.output.startswith("file://"):
            dataset_dir = Path("out") / "datasets" / f"synthetic-seed{args.seed}-{args.synthetic_clips}"
        else:
            dataset_dir = Path(args.output.removeprefix("file://")) / "dataset"
        dataset = str(build_or_reuse_synthetic(dataset_dir, args))
    config = dataclasses.replace(config, dataset=dataset)
    log.info("config: %s", json.dumps(config.__dict__, default=str))
    result = train(config)
    if args.install and result.final_checkpoint:
        installed = copy_checkpoint(result.final_checkpoint, args.install, options)
        log.info("installed %s -> %s", result.final_checkpoint, installed)
    summary = {"output": result.output, "final_checkpoint": result.final_checkpoint, "steps": result.steps_done,
               "run_id": result.run_id, "minutes": round((time.monotonic() - started) / 60, 2),
               "last": {k: v[-1][1] for k, v in result.history.items() if v}}
    print(json.dumps(summary, indent=2))
    return 0


def _init_from_problem(uri: str, preset: str, new: "GeneratorConfig", options: storage.StorageOptions) -> str | None:
    """Why a fine-tuning run into `new` (--preset `preset`) cannot start from `uri`, or None: checked before a
    data set is built."""
    from model import GeneratorConfig
    from model.checkpoint import fine_tune_refusals

    fs, path = storage.filesystem(uri, options)
    config_path = f"{path.rstrip('/')}/config.json"
    if not fs.exists(config_path):
        return "holds no model checkpoint (config.json)"
    try:
        with fs.open(config_path, "r") as f:
            saved = GeneratorConfig.from_dict(json.load(f)["config"])
    except (ValueError, KeyError, TypeError) as e:
        return f"has an unreadable config.json ({e})"
    refused = fine_tune_refusals(saved, new)
    return f"has another architecture than --preset {preset} (checkpoint, new): {refused}" if refused else None


def build_or_reuse_synthetic(dataset_dir: Path, args: argparse.Namespace) -> Path:
    """The synthetic data set for this seed, reused when an identical one is already there."""
    from model import get_preset
    from training.synthetic import SyntheticConfig, build_synthetic_dataset

    config = SyntheticConfig(image_size=get_preset(args.preset).image_size, num_clips=args.synthetic_clips,
                             seed=args.seed)
    manifest = dataset_dir / "dataset.json"
    if manifest.is_file():
        from dataclasses import asdict

        saved = json.loads(manifest.read_text()).get("source", {}).get("config")
        if saved == json.loads(json.dumps(asdict(config))):
            log.info("reusing synthetic data set %s", dataset_dir)
            return dataset_dir
        shutil.rmtree(dataset_dir)
    log.info("building synthetic data set in %s", dataset_dir)
    return build_synthetic_dataset(config, dataset_dir)


if __name__ == "__main__":
    sys.exit(main())
