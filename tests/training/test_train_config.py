"""TrainConfig and LossConfig check every field once, with a ConfigError naming it (and jobs/train its flag)."""

from __future__ import annotations

import json

import pytest

from model import get_preset
from model.config import RETIRED_FIELDS, ConfigError
from training.config import LossConfig, TrainConfig


def config(**fields) -> TrainConfig:
    return TrainConfig(**{"dataset": "shards", "output": "out", **fields})


@pytest.mark.parametrize("fields, message", [
    ({"steps": -1}, r"^steps must be >= 0, got -1$"),
    ({"vae_steps": 2.5}, r"^vae_steps must be an int, got 2.5$"),
    ({"checkpoint_every": 0}, r"^checkpoint_every must be >= 1, got 0$"),
    ({"clip_frames": 1}, r"^clip_frames must be >= 2, got 1$"),
    ({"closed_eye_share": 1.5}, r"^closed_eye_share must be in \[0, 1\], got 1.5$"),
    ({"lr": 0.0}, r"^lr must be > 0, got 0$"),
    ({"max_minutes": -3.0}, r"^max_minutes must be > 0, got -3$"),
    ({"resume": "yes"}, r"^resume must be true or false, got 'yes'$"),
    ({"output": ""}, r"^output must be a non-empty string, got ''$"),
    ({"preset": "huge"}, r"^unknown preset 'huge'; choose one of base, tiny$"),
    ({"vae_decoder_only": True}, r"^vae_decoder_only refines the decoder of an init_from checkpoint"),
    ({"model_overrides": {"d_model": "64"}}, r"^d_model must be an int, got '64'$"),
    ({"model_overrides": {"vae_region_weight": 1.0}},
     r"^model_overrides: vae_region_weight is a loss weight, not part of the model: pass it in loss_overrides$"),
    ({"model_overrides": {"n_layer": 2}}, r"^model_overrides: unknown GeneratorConfig field 'n_layer'$"),
    ({"loss_overrides": {"change_weight": -1.0}}, r"^change_weight must be >= 0, got -1$"),
    ({"loss_overrides": {"self_forcing": 2}}, r"^self_forcing must be in \[0, 1\], got 2$"),
    ({"loss_overrides": {"mouth_wieght": 1.0}}, r"^unknown loss fields: \['mouth_wieght'\]$"),
    ({"preset": "base", "loss_overrides": {"vae_blink_weight": 0.5}},
     r"^vae_blink_weight trains the lid layer's readout, which preset base lacks; add vae_lid_layer$"),
])
def test_a_bad_training_setting_is_refused_naming_its_field(fields, message):
    with pytest.raises(ConfigError, match=message):
        config(**fields)


def test_the_blink_weight_is_accepted_where_the_model_has_the_lid_layer():
    config(preset="base", model_overrides={"vae_lid_layer": True}, loss_overrides={"vae_blink_weight": 0.5})
    assert config(loss_overrides={"vae_blink_weight": 0.5}).fresh_losses().vae_blink_weight == 0.5  # tiny has it


def test_loss_weights_come_from_the_defaults_or_a_resumed_runs_saved_ones_with_the_overrides_on_top():
    run = config(loss_overrides={"mouth_weight": 2.0})
    assert run.fresh_losses() == LossConfig(mouth_weight=2.0)
    saved = LossConfig(vae_region_weight=50.0, mouth_weight=1.0)
    assert run.resumed_losses(saved) == LossConfig(vae_region_weight=50.0, mouth_weight=2.0)
    assert run.resumed_losses(None) == LossConfig(mouth_weight=2.0)
    assert run.model_config() == get_preset("tiny")


def test_loss_weights_round_trip_through_loss_json_and_are_read_from_an_old_config_json(tmp_path):
    losses = LossConfig(vae_region_weight=50.0, vae_blink_weight=0.5)
    # older config.json files carry every field but those added after loss.json
    assert set(losses.to_dict()) - {"mouth_concordance_weight", "sync_weight"} == RETIRED_FIELDS
    assert LossConfig.read(losses.save(tmp_path).parent) == losses
    old = tmp_path / "old"
    old.mkdir()
    assert LossConfig.read(old) is None
    (old / "config.json").write_text(json.dumps({"config": {"d_model": 256, **losses.to_dict()}}))
    assert LossConfig.read(old) == losses
