"""GeneratorConfig checks each field once, raising ConfigError (a ValueError, kept under python -O) naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from model import GeneratorConfig, get_preset
from model.config import RETIRED_FIELDS, ConfigError


@pytest.mark.parametrize("overrides, message", [
    ({"d_model": "256"}, r"^d_model must be an int, got '256'$"),
    ({"n_layers": 0}, r"^n_layers must be >= 1, got 0$"),
    ({"n_heads": True}, r"^n_heads must be an int, got True$"),
    ({"mlp_ratio": -1.0}, r"^mlp_ratio must be > 0, got -1$"),
    ({"rope_base": float("nan")}, r"^rope_base must be a finite number, got nan$"),
    ({"audio_lead_ms": "160"}, r"^audio_lead_ms must be a finite number, got '160'$"),
    ({"audio_level": 1}, r"^audio_level must be true or false, got 1$"),
    ({"mouth_magnification": 0.5}, r"^mouth_magnification must be in \[1, 4\], got 0.5$"),
    ({"vae_channels": (32,)}, r"^vae_channels must be a list of at least two ints >= 1, got \(32,\)$"),
    ({"image_size": 100}, r"^image_size must divide by the VAE's stride 8 \(2 \*\* len\(vae_channels\)\), got 100$"),
    ({"latent_patch": 3}, r"^latent_patch must divide the latent grid's side 16, got 3$"),
    ({"n_heads": 3}, r"^n_heads must split d_model 256 into heads of an even width \(RoPE rotates pairs\), got 3$"),
])
def test_a_bad_field_is_refused_with_a_message_naming_it(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        get_preset("tiny", **overrides)
    assert isinstance(caught.value, ValueError) and caught.value.field == next(iter(overrides))


def test_an_error_can_name_its_field_the_way_a_command_line_does():
    with pytest.raises(ConfigError) as caught:
        GeneratorConfig(window_frames=0)
    assert caught.value.naming(lambda name: "--" + name.replace("_", "-")) == "--window-frames must be >= 1, got 0"


def test_from_dict_takes_a_json_list_drops_retired_loss_weights_and_refuses_unknown_fields():
    saved = {**get_preset("tiny").to_dict(), **{name: 0.5 for name in RETIRED_FIELDS}}
    assert GeneratorConfig.from_dict(saved) == get_preset("tiny")
    assert isinstance(GeneratorConfig.from_dict(saved).vae_channels, tuple)
    with pytest.raises(ConfigError, match=r"unknown config fields: \['n_layer'\]"):
        GeneratorConfig.from_dict({**saved, "n_layer": 3})


def test_the_checks_hold_under_python_dash_O():
    """assert statements vanish under -O; the config's checks are not asserts."""
    code = "from model import get_preset\ntry:\n    get_preset('tiny', image_size=100)\nexcept ValueError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert "image_size must divide by the VAE's stride 8" in out.stdout, out.stderr[-2000:]
