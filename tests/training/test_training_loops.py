"""DeepSpeed training on CPU: a few steps reduce the loss, checkpoints load, a restarted run resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.config import RETIRED_FIELDS
from training.checkpointing import latest_checkpoint, load_training_checkpoint
from training.config import LossConfig, TrainConfig
from training.loops import train
from training.shards import ClipDataset
from training.stage import load_deepspeed_config, lr_lambda
from training.synthetic import SyntheticConfig, build_synthetic_dataset

pytestmark = pytest.mark.training

# a micro generator (the tiny preset's layout, narrower and shallower) so that a CPU step takes ~0.1 s
MICRO = dict(image_size=64, vae_channels=(8, 16, 32), latent_channels=4, d_model=64, n_layers=1, n_heads=2,
             window_frames=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, shared_media):
    config = SyntheticConfig(image_size=64, num_clips=4, clips_per_shard=4, clip_frames=12, seed=3,
                             media_root=str(shared_media), video_frame_times=(1.0,), include_flite=False)
    return str(build_synthetic_dataset(config, tmp_path_factory.mktemp("ds")))


def config_for(dataset: str, output: str, **overrides) -> TrainConfig:
    base = dict(dataset=dataset, output=output, model_overrides=MICRO, vae_steps=6, steps=6,
                vae_batch_frames=4, batch_clips=2, clip_frames=8, log_every=2, checkpoint_every=4,
                warmup_steps=2, sample_video=False)
    return TrainConfig(**{**base, **overrides})


def test_a_few_deepspeed_steps_reduce_both_losses_and_write_a_loadable_checkpoint(dataset, tmp_path, mlflow_tracking_uri):
    from model import load_checkpoint

    result = train(config_for(dataset, str(tmp_path / "run"), vae_steps=12, steps=12, tracking_uri=mlflow_tracking_uri))
    for stage in ("vae", "transformer"):
        curve = [v for _, v in result.history[f"{stage}/total"]]
        half = len(curve) // 2  # halves, not single points: each logged value is one small random batch
        assert np.mean(curve[half:]) < np.mean(curve[:half]), f"{stage} loss did not fall: {curve}"
    assert result.steps_done == 24
    generator = load_checkpoint(result.final_checkpoint)
    assert generator.config.image_size == 64
    import mlflow

    run = mlflow.MlflowClient(mlflow_tracking_uri).get_run(result.run_id)
    assert run.data.tags["eartalk.job"] == "train"
    assert {"vae/total", "transformer/total", "transformer/lr", "transformer/frames_per_s"} <= set(run.data.metrics)


def test_a_restarted_run_resumes_from_the_last_checkpoint(dataset, tmp_path):
    output = str(tmp_path / "run")
    first = train(config_for(dataset, output, steps=4))  # stops after 6 VAE + 4 transformer steps
    assert first.steps_done == 10
    _, state = load_training_checkpoint(latest_checkpoint(output))
    assert (state.stage, state.step) == ("transformer", 10)
    resumed = train(config_for(dataset, output, steps=6))
    assert resumed.steps_done == 12
    steps_logged = [step for step, _ in resumed.history["transformer/total"]]
    assert steps_logged and min(steps_logged) > 10, f"the resumed run repeated steps: {steps_logged}"
    assert "vae/total" not in resumed.history, "the finished VAE stage ran again"


def test_a_run_resumed_at_the_stage_boundary_trains_as_one_that_never_stopped(dataset, tmp_path):
    """The end of stage 1 carries the random streams stage 2 continues (batches, dropout, history noise)."""
    from model import load_checkpoint

    whole = train(config_for(dataset, str(tmp_path / "whole"), vae_steps=4, steps=4))
    output = str(tmp_path / "split")
    train(config_for(dataset, output, vae_steps=4, steps=0))
    _, state = load_training_checkpoint(latest_checkpoint(output))
    assert (state.stage, state.step) == ("vae", 4)
    resumed = train(config_for(dataset, output, vae_steps=4, steps=4))
    assert resumed.steps_done == 8 and "vae/total" not in resumed.history
    a, b = load_checkpoint(whole.final_checkpoint).state_dict(), load_checkpoint(resumed.final_checkpoint).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a), "stage 2 drew other batches after the resume"


def test_a_resumed_run_trains_with_its_changed_vae_region_weight(dataset, tmp_path):
    output = str(tmp_path / "run")
    train(config_for(dataset, output, vae_steps=4, steps=0))
    resumed = train(config_for(dataset, output, vae_steps=8, steps=0, loss_overrides=dict(vae_region_weight=5.0)))
    h = {key.split("/")[1]: dict(values) for key, values in resumed.history.items() if key.startswith("vae/")}
    for step in h["total"]:  # the logged total is the sum of its terms, the region's with the new weight
        terms = h["l1"][step] + h["mse"][step] + h["motion_l1"][step] + 5.0 * h["region_mse"][step]
        assert h["total"][step] == pytest.approx(terms + 1e-6 * h["kl"][step], rel=1e-4), step


def test_a_resumed_run_keeps_the_loss_weights_it_saved_also_from_a_checkpoint_that_kept_them_in_config_json(
        dataset, tmp_path):
    """Loss weights travel in loss.json beside each checkpoint; a checkpoint from before loss.json carries them
    in config.json's model config, and a resume reads them from there."""
    from pathlib import Path

    def region_weight_of(run) -> float:  # the weight the logged totals were summed with
        h = {key.split("/")[1]: dict(values) for key, values in run.history.items() if key.startswith("vae/")}
        step = max(h["total"])
        rest = h["l1"][step] + h["mse"][step] + h["motion_l1"][step] + 1e-6 * h["kl"][step]
        return (h["total"][step] - rest) / h["region_mse"][step]

    for old_style in (False, True):
        output = str(tmp_path / f"run-{old_style}")
        train(config_for(dataset, output, vae_steps=4, steps=0, loss_overrides=dict(vae_region_weight=5.0)))
        checkpoint = Path(latest_checkpoint(output))
        assert LossConfig.read(checkpoint) == LossConfig(vae_region_weight=5.0)
        if old_style:
            (checkpoint / "loss.json").unlink()
            meta = json.loads((checkpoint / "config.json").read_text())
            # what such checkpoints held: the loss fields of their day (RETIRED_FIELDS), inside the model config
            meta["config"].update({k: v for k, v in LossConfig(vae_region_weight=5.0).to_dict().items()
                                   if k in RETIRED_FIELDS})
            (checkpoint / "config.json").write_text(json.dumps(meta))
        _, state = load_training_checkpoint(str(checkpoint))
        assert state.loss == LossConfig(vae_region_weight=5.0).to_dict()
        resumed = train(config_for(dataset, output, vae_steps=6, steps=0))  # no loss weights given
        assert region_weight_of(resumed) == pytest.approx(5.0, rel=1e-3), old_style


def test_only_rank_0_continues_its_saved_random_streams_the_others_draw_their_own(dataset):
    from training.checkpointing import TrainerState
    from training.sampler import BatchSampler, restore_rng

    config = config_for(dataset, "unused")
    saved = BatchSampler(ClipDataset(dataset), config, ["yaw"], rank=0)
    saved.rng.random(5)  # somewhere along rank 0's stream
    state = TrainerState(stage="transformer", step=10, optimizer={}, scheduler={},
                         rng={"sampler": saved.state(), "torch": torch.get_rng_state()})
    firsts = {}
    for rank in (0, 1, 2):
        sampler = BatchSampler(ClipDataset(dataset), config, ["yaw"], rank=rank)
        restore_rng(state, sampler, rank, config.seed)
        firsts[rank] = float(sampler.rng.random())
    assert firsts[0] == float(saved.rng.random())
    assert len(set(firsts.values())) == 3, f"ranks share a stream: {firsts}"


def test_checkpoints_go_to_object_storage(dataset, s3_server, monkeypatch):
    import uuid

    import s3fs

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    # a bucket made without a LocationConstraint (conftest's s3_bucket sends us-east-1, which S3 rejects)
    s3_bucket = f"train-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(key=s3_server.access_key, secret=s3_server.secret_key,
                      client_kwargs={"endpoint_url": s3_server.endpoint_url}).mkdir(s3_bucket)
    output = f"s3://{s3_bucket}/runs/r1"
    result = train(config_for(dataset, output, vae_steps=2, steps=2, checkpoint_every=2))
    fs = s3_server.filesystem()
    assert fs.exists(f"{s3_bucket}/runs/r1/final/model.safetensors")
    assert latest_checkpoint(output).endswith("step-00000004")
    generator, state = load_training_checkpoint(latest_checkpoint(output))
    assert state.step == 4 and result.steps_done == 4


def test_deepspeed_configs_load_and_gpu_precision_is_refused_on_cpu(tmp_path):
    from pathlib import Path

    shipped = sorted((Path(__file__).resolve().parents[2] / "configs" / "train").glob("*.json"))
    assert {p.name for p in shipped} >= {"cpu_fp32.json", "gpu_bf16_zero2.json", "gpu_fp16_zero1.json"}
    for path in shipped:
        config = json.loads(path.read_text())
        assert config["zero_optimization"]["stage"] in (0, 1, 2, 3), path
    assert load_deepspeed_config(shipped[0], micro_batch=3)["train_micro_batch_size_per_gpu"] == 3
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="bf16/fp16 need a GPU"):
            load_deepspeed_config(Path(shipped[0]).with_name("gpu_bf16_zero2.json"), micro_batch=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_deepspeed_config(tmp_path / "nope.json", 1)


def test_learning_rate_warms_up_then_decays():
    f = lr_lambda(warmup=4, total=20, min_ratio=0.1)
    values = [f(s) for s in range(20)]
    assert values[0] < values[3] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1, abs=0.02) and np.all(np.diff(values[4:]) <= 1e-12)


def test_control_batches_follow_the_model_order_with_extra_dropout(dataset):
    from model import CONTROL_NAMES

    from training.sampler import BatchSampler

    ds = ClipDataset(dataset)
    sampler = BatchSampler(ds, config_for(dataset, "unused", control_dropout=0.5, span_dropout=0.0),
                           list(CONTROL_NAMES))
    batches = [sampler.clip_batch() for _ in range(20)]
    yaw = CONTROL_NAMES.index("yaw")
    absent = np.mean([torch.isnan(b["controls"][:, :, yaw]).all(dim=1).float().mean().item() for b in batches])
    assert 0.2 < absent < 0.8, f"yaw absent in {absent:.0%} of clips with dropout 0.5"
    expression = CONTROL_NAMES.index("expression")
    assert all(torch.isnan(b["controls"][:, :, expression]).all() for b in batches), "the puppet has no expression"
    first = batches[0]
    # each window carries its whole data-set clip's audio and where the window starts in it
    assert first["frames"].shape == (2, 8, 3, 64, 64) and first["audio"].shape == (2, ds.clip_frames * 640)
    starts = torch.cat([b["audio_start"] for b in batches])
    assert 0 <= starts.min() and starts.max() <= ds.clip_frames - 8 and len(set(starts.tolist())) > 1
    assert first["controls"].shape == (2, 8, len(CONTROL_NAMES))


def test_cached_clip_latents_give_the_same_loss_as_encoding_the_images(dataset):
    from model import CONTROL_NAMES, Generator, GeneratorConfig

    from training.latents import ClipLatents
    from training.losses import TransformerLoss
    from training.sampler import BatchSampler

    ds = ClipDataset(dataset)
    generator = Generator(GeneratorConfig(**MICRO)).eval()  # eval: no history noise, no control dropout
    config = config_for(dataset, "unused")
    with_images = BatchSampler(ds, config, list(CONTROL_NAMES))
    with_latents = BatchSampler(ds, config, list(CONTROL_NAMES))
    with_latents.latents = ClipLatents(ds, generator.vae)
    loss = TransformerLoss(generator, ds.fps)
    for _ in range(3):  # same seed, same draws: the second sampler carries latents instead of images
        a, b = with_images.clip_batch(), with_latents.clip_batch()
        assert "frames" not in b and b["target_latents"].shape == (2, 8, 4, 8, 8)
        with torch.no_grad():
            from_images, from_latents = loss(**a), loss(**b)
        assert from_latents["total"].item() == pytest.approx(from_images["total"].item(), rel=1e-5)


def test_a_fine_tuning_run_starts_from_another_runs_weights_and_grows_the_audio_input(dataset, tmp_path):
    from model import load_checkpoint

    base = train(config_for(dataset, str(tmp_path / "base"), steps=2,
                            model_overrides=dict(MICRO, audio_level=False)))
    tuned = train(config_for(dataset, str(tmp_path / "tuned"), vae_steps=0, steps=2, init_from=base.final_checkpoint,
                             model_overrides=dict(MICRO, audio_level=True)))
    assert tuned.steps_done == 2 and "vae/total" not in tuned.history
    before, after = load_checkpoint(base.final_checkpoint), load_checkpoint(tuned.final_checkpoint)
    assert after.config.audio_level and not before.config.audio_level
    for name, weight in before.vae.state_dict().items():  # stage 2 keeps the VAE frozen
        assert torch.equal(weight, after.vae.state_dict()[name]), name
    old_in = before.audio.proj[0].weight
    new_in = after.audio.proj[0].weight.view(old_in.shape[0], -1, before.config.n_mels + 1)
    assert new_in.shape[1] * before.config.n_mels == old_in.shape[1]
    assert new_in[:, :, -1].abs().sum() > 0, "the level inputs did not train"


def test_a_decoder_only_vae_stage_keeps_the_latent_space_of_the_checkpoint_it_refines(dataset, tmp_path):
    """--vae-decoder-only: the decoder trains, the encoder (what the transformer predicts in) does not move."""
    from model import load_checkpoint

    base = train(config_for(dataset, str(tmp_path / "base"), steps=2))
    refined = train(config_for(dataset, str(tmp_path / "refined"), vae_steps=4, steps=0, vae_decoder_only=True,
                               init_from=base.final_checkpoint, loss_overrides=dict(vae_region_weight=4.0)))
    assert refined.steps_done == 4 and "transformer/total" not in refined.history
    assert [v for _, v in refined.history["vae/region_mse"]], "the region term was not logged"
    before, after = load_checkpoint(base.final_checkpoint), load_checkpoint(refined.final_checkpoint)
    decoder = {id(p) for p in after.vae.decoder_parameters()}
    moved = {name for name, p in after.vae.named_parameters()
             if not torch.equal(p, before.vae.state_dict()[name])}
    encoder = {name for name, p in after.vae.named_parameters() if id(p) not in decoder}
    assert moved and not moved & encoder, f"encoder weights changed: {sorted(moved & encoder)}"
    for name, weight in before.state_dict().items():  # and stage 2 did not run
        if not name.startswith("vae."):
            assert torch.equal(weight, after.state_dict()[name]), name
    assert LossConfig.read(refined.final_checkpoint).vae_region_weight == 4.0  # saved beside the final weights


def test_stage_one_draws_the_closed_eye_share_of_its_frames_from_blinks(dataset):
    from training.sampler import BatchSampler

    ds = ClipDataset(dataset)
    column = ds.controls.index("blink")
    # closed: under half the clip's median openness (the label is absolute; some open eyes read 0.4)
    closed = {(round(float(ds[i].controls[f, column]), 6), ds[i].frames[f].tobytes()) for i in range(len(ds))
              for f in np.flatnonzero(ds[i].controls[:, column] < 0.5 * np.median(ds[i].controls[:, column]))}
    base_rate = len(closed) / sum(len(ds[i].frames) for i in range(len(ds)))  # 0.29 in these 12-frame clips
    assert 0 < base_rate < 0.35, "the synthetic clips blink"
    for share, lower, upper in ((0.0, 0.0, base_rate + 0.15), (1.0, 0.9, 1.0)):
        sampler = BatchSampler(ds, config_for(dataset, "unused", vae_batch_frames=16, closed_eye_share=share), ["blink"])
        batches = [sampler.vae_batch() for _ in range(8)]
        drawn = [(round(float(label), 6), (frame.permute(1, 2, 0) * 255).round().byte().numpy().tobytes())
                 for b in batches for frame, label in zip(b["frames"], b["blink"])]
        closed_drawn = [pair for pair in drawn if pair in closed]
        assert lower <= len(closed_drawn) / len(drawn) <= upper, (share, len(closed_drawn), len(drawn))
    assert all(torch.isnan(label) == (frame == portrait).all() for b in batches  # the portrait: no label
               for frame, label, portrait in zip(b["frames"], b["blink"], b["portraits"]))
