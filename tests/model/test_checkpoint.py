"""Checkpoints: safetensors + config.json round trip; pickles, corrupt files and mismatches refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model import DEFAULT_CHECKPOINT, CheckpointError, checkpoint_version, get_preset, load_checkpoint, save_checkpoint
from model.config import RETIRED_FIELDS
from tests.model.conftest import request, small_generator


@pytest.fixture
def saved(tmp_path, generator):
    return save_checkpoint(generator, tmp_path / "ckpt")


def test_round_trip_gives_identical_frames(saved, generator):
    loaded = load_checkpoint(saved)
    req = request(generator, 5)
    assert torch.equal(torch.stack(list(generator.stream([req]))), torch.stack(list(loaded.stream([req]))))
    assert loaded.config == generator.config
    assert checkpoint_version(saved).startswith("sha256:")


def test_the_version_changes_with_the_weights_and_with_the_config_they_render_with(saved, tmp_path):
    """Results rows and MLflow name the model by this version: the same weights shown with another mouth
    magnification render other videos, so they are another version."""
    version = checkpoint_version(saved)
    other = tmp_path / "other"
    shutil.copytree(saved, other)
    assert checkpoint_version(other) == version
    meta = json.loads((other / "config.json").read_text())
    meta["config"]["mouth_magnification"] = 1.0
    (other / "config.json").write_text(json.dumps(meta))
    assert checkpoint_version(other) != version
    weights = (saved / "model.safetensors").read_bytes()
    changed = tmp_path / "changed"
    shutil.copytree(saved, changed)
    (changed / "model.safetensors").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    assert checkpoint_version(changed) != version


def test_corrupted_weights_are_refused(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        load_checkpoint(saved)


def test_a_pickle_named_model_safetensors_is_refused_before_unpickling(saved, generator):
    torch.save(generator.state_dict(), saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="pickle / torch.save file.*refusing to unpickle"):
        load_checkpoint(saved)


def test_safetensors_whose_header_length_starts_like_a_pickle_loads(tmp_path):
    """A safetensors file opens with its header's length; one whose low byte is 0x80 (a pickle's first byte)
    is still safetensors (a training checkpoint once hit this)."""
    from safetensors.torch import save_file

    from model.checkpoint import refuse_pickle

    path = tmp_path / "model.safetensors"
    for pad in range(300):
        save_file({"w": torch.zeros(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    refuse_pickle(path)  # no error
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)  # a bare pickle: 0x80 0x02
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        refuse_pickle(path)


def test_a_lone_pickled_checkpoint_is_refused(tmp_path, generator):
    d = tmp_path / "pickled"
    d.mkdir()
    torch.save(generator.state_dict(), d / "model.pt")
    (d / "config.json").write_text(json.dumps({"format": "eartalking-generator", "format_version": 1, "config": generator.config.to_dict()}))
    with pytest.raises(CheckpointError, match=r"missing \(found \['model.pt'\]: pickled checkpoints are refused"):
        load_checkpoint(d)


def test_config_that_does_not_match_the_weights_is_refused(saved):
    meta = json.loads((saved / "config.json").read_text())
    meta["config"]["d_model"] = 96
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="has shape .* config.json implies"):
        load_checkpoint(saved)


def test_expected_config_mismatch_is_refused(saved):
    with pytest.raises(CheckpointError, match="config differs from the expected one"):
        load_checkpoint(saved, expect=get_preset("tiny"))


def test_wrong_format_version_and_missing_config_are_refused(saved, tmp_path):
    meta = json.loads((saved / "config.json").read_text())
    meta["format_version"] = 99
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json must sit beside"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")


def test_shipped_default_checkpoint_loads_within_budget():
    weights = DEFAULT_CHECKPOINT / "model.safetensors"
    assert weights.stat().st_size <= 25 * 1024 * 1024
    g = load_checkpoint(DEFAULT_CHECKPOINT)
    assert g.config == get_preset("tiny")  # the architecture is the tiny preset


def test_an_old_checkpoint_whose_config_carries_loss_weights_loads_them_dropped_with_the_same_frames(tmp_path):
    """Checkpoints written before the loss weights left GeneratorConfig list them in config.json: they are read
    and dropped, and the weights render exactly as the shipped checkpoint does."""
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(DEFAULT_CHECKPOINT / "model.safetensors", old / "model.safetensors")
    meta = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text())
    assert not set(meta["config"]) & RETIRED_FIELDS, "the shipped config.json describes the model only"
    weights = {"change_weight": 0.0, "control_dropout": 0.5, "history_noise": 0.1, "mouth_weight": 0.0,
               "self_forcing": 0.0, "vae_blink_weight": 0.5, "vae_region_weight": 50.0}
    assert set(weights) == RETIRED_FIELDS
    meta["config"].update(weights)
    (old / "config.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    loaded, shipped = load_checkpoint(old), load_checkpoint(DEFAULT_CHECKPOINT)
    assert loaded.config == shipped.config == get_preset("tiny")
    assert checkpoint_version(old) == checkpoint_version(DEFAULT_CHECKPOINT)
    req = request(shipped, 4)
    assert torch.equal(torch.stack(list(loaded.stream([req]))), torch.stack(list(shipped.stream([req]))))
    # a field that is neither the model's nor a retired loss weight is still refused
    meta["config"]["dropout_typo"] = 0.1
    (old / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"invalid config \(unknown config fields: \['dropout_typo'\]\)"):
        load_checkpoint(old)


def test_a_config_json_with_a_mistyped_field_is_refused_naming_it(saved):
    meta = json.loads((saved / "config.json").read_text())
    meta["config"]["d_model"] = "64"
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"invalid config \(d_model must be an int, got '64'\)"):
        load_checkpoint(saved)


def test_fine_tuning_from_a_checkpoint_without_the_level_feature_keeps_its_output(tmp_path):
    import dataclasses

    from model import Generator
    from model.checkpoint import init_from_checkpoint

    old = small_generator(audio_level=False)
    torch.nn.init.normal_(old.audio.proj[0].weight, std=0.05)  # so that the audio path matters
    path = save_checkpoint(old, tmp_path / "old")
    grown = Generator(dataclasses.replace(old.config, audio_level=True)).eval()
    assert init_from_checkpoint(grown, path) == {"audio.proj.0.weight": "level inputs added at zero"}
    req = request(old, 6)
    assert torch.allclose(torch.stack(list(old.stream([req]))), torch.stack(list(grown.stream([req]))), atol=1e-5)
    # the grown network does read the level: a non-zero weight on it changes the audio tokens
    with torch.no_grad():
        grown.audio.proj[0].weight.view(grown.config.d_model, -1, grown.config.n_mels + 1)[:, :, -1] = 0.5
        wave = req.audio[None]
        assert not torch.allclose(old.audio(wave, 25.0, 6), grown.audio(wave, 25.0, 6), atol=1e-3)


def test_fine_tuning_with_the_audio_mouth_path_grown_keeps_the_output(tmp_path):
    import dataclasses

    from model import Generator
    from model.checkpoint import init_from_checkpoint

    old = small_generator()
    path = save_checkpoint(old, tmp_path / "old")
    grown = Generator(dataclasses.replace(old.config, audio_mouth=True)).eval()
    assert init_from_checkpoint(grown, path) == {"audio_mouth": "audio-to-mouth path added at zero"}
    req = request(old, 6)
    assert torch.equal(torch.stack(list(old.stream([req]))), torch.stack(list(grown.stream([req]))))
    with torch.no_grad():
        grown.audio_mouth.weight.normal_(std=0.05)
    assert not torch.allclose(torch.stack(list(old.stream([req]))), torch.stack(list(grown.stream([req]))), atol=1e-4)


def test_fine_tuning_into_another_architecture_is_refused(tmp_path):
    from model.checkpoint import init_from_checkpoint

    path = save_checkpoint(small_generator(audio_level=True), tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match=r"cannot fine-tune into a different architecture.*n_layers"):
        init_from_checkpoint(small_generator(n_layers=3, audio_level=True), path)
    with pytest.raises(CheckpointError, match=r"audio_level.*\(True, False\)"):  # a feature is never removed
        init_from_checkpoint(small_generator(audio_level=False), path)


def test_fine_tuning_with_the_lid_layer_grown_starts_from_the_same_frames_and_it_draws_skin_from_above(tmp_path):
    import dataclasses

    from model import Generator
    from model.checkpoint import init_from_checkpoint

    old = small_generator(vae_lid_layer=False)
    path = save_checkpoint(old, tmp_path / "old")
    grown = Generator(dataclasses.replace(old.config, vae_lid_layer=True)).eval()
    assert init_from_checkpoint(grown, path) == {"vae_lid_layer": "lid layer added, blended in at almost zero"}
    S = old.config.image_size
    # a portrait of horizontal stripes: what lies above a pixel differs from the pixel itself
    rows = (torch.arange(S) // 3 % 2).float()
    portrait = torch.stack([rows[:, None].expand(S, S)] * 3)[None]
    with torch.no_grad():
        reference_old, reference_new = old.vae.reference(portrait), grown.vae.reference(portrait)
        latents = old.vae.encode(portrait)
        before, after = old.vae.decode(latents, reference_old), grown.vae.decode(latents, reference_new)
        assert (before - after).abs().max() < 0.02  # the lid layer starts at ~0.1 % of the blend
        grown.vae.to_lid[-1].bias.fill_(20.0)  # all lid layer: the portrait as seen lid_lift higher up
        lid = grown.vae.decode(latents, reference_new)
    lift = grown.vae.lid_lift * S  # pixels; bilinear sampling blends the two rows around it
    low, frac = int(lift), lift - int(lift)
    shifted = (1 - frac) * torch.roll(rows, low) + frac * torch.roll(rows, low + 1)
    interior = slice(low + 2, S)  # rows whose source lies inside the portrait
    rows_drawn = lid[0, 0, :, S // 2]
    assert (rows_drawn[interior] - shifted[interior]).abs().max() < 1e-3
    assert (rows_drawn[interior] - rows[interior]).abs().max() > 0.4


def test_weights_check_reads_only_the_header_and_refuses_a_huge_config_before_allocating(saved):
    """Regression: a config.json naming d_model 16384 and 48 layers was built (6.7 GB, 32 s) before any check."""
    import time

    from model.checkpoint import check_weights

    assert check_weights(saved) == load_checkpoint(saved).config
    meta = json.loads((saved / "config.json").read_text())
    meta["config"].update(d_model=16384, n_layers=48, n_heads=64)
    (saved / "config.json").write_text(json.dumps(meta))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"config.json implies [\d,]+ parameters in \d+ tensors, the file holds "
                                              r"[\d,]+ in \d+\): \d+ missing, 0 unexpected, first missing 'transformer.layers"):
        check_weights(saved)
    assert time.perf_counter() - start < 5.0  # built on the meta device: no memory, no time


def test_weights_check_names_the_first_tensor_of_another_shape_and_a_corrupt_header(saved):
    from model.checkpoint import check_weights

    meta = json.loads((saved / "config.json").read_text())
    meta["config"]["d_model"] = 96
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"has shape \(\d+, 64\), config.json implies \(\d+, 96\)"):
        check_weights(saved)
    meta["config"]["d_model"] = 64
    (saved / "config.json").write_text(json.dumps(meta))
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or not a safetensors file"):
        check_weights(saved)


def test_fine_tuning_a_regression_checkpoint_into_the_flow_head_takes_every_weight_but_the_head(tmp_path):
    import dataclasses

    from model import Generator
    from model.checkpoint import fine_tune_refusals, init_from_checkpoint

    old = small_generator()
    path = save_checkpoint(old, tmp_path / "old")
    flow_config = dataclasses.replace(old.config, head="flow", flow_width=32, flow_layers=2, flow_steps=3)
    torch.manual_seed(1)
    flow = Generator(flow_config)
    fresh = {k: v.clone() for k, v in flow.state_dict().items() if k.startswith("flow_head.")}
    assert init_from_checkpoint(flow, path) == {"flow_head": "regression head replaced by a fresh flow head"}
    state, before = flow.state_dict(), old.state_dict()
    assert not any(k.startswith("head.") for k in state)
    for name, tensor in before.items():
        if not name.startswith("head."):
            assert torch.equal(state[name], tensor), name
    for name, tensor in fresh.items():  # the flow head as built: adaLN-zero, so zero velocity at the start
        assert torch.equal(state[name], tensor), name
    assert not flow.flow_head.out.weight.any() and not flow.flow_head.out_modulation.weight.any()
    # the sampler's settings may change between flow checkpoints, its shape may not; back to regression neither
    flow_path = save_checkpoint(flow, tmp_path / "flow")
    assert fine_tune_refusals(flow.config, dataclasses.replace(flow_config, flow_steps=8, flow_noise_std=0.5)) == {}
    with pytest.raises(CheckpointError, match=r"flow_width.*\(32, 64\)"):
        init_from_checkpoint(Generator(dataclasses.replace(flow_config, flow_width=64)), flow_path)
    with pytest.raises(CheckpointError, match=r"head.*\('flow', 'regression'\)"):
        init_from_checkpoint(Generator(old.config), flow_path)
