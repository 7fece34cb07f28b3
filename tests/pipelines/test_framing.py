"""Framing in the render stages (called directly, no Ray): `portrait` composites the face into the whole
portrait at its own size, `crop` is the model's aligned crop exactly as before framing existed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import storage
from faces.composite import output_size, psnr_outside
from media import load_image, read_video
from pipelines.stages import RenderActor, load_assets
from tests.pipelines.helpers import short_speech


def manifest_row(i: int, row_id: str, portrait, audio, framing: str) -> dict:
    return {"row": i, "id": row_id, "portrait": str(portrait), "audio": str(audio), "controls": "", "fps": 25.0,
            "seed": 0, "reference_video": "", "tags": "{}", "output_root": "", "framing": framing}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, random_tiny_checkpoint, shared_media, speech_wav):
    """obama.jpg speaking 0.6 s of real speech, once per framing, through the asset stage and the render actor."""
    out = tmp_path_factory.mktemp("out")
    speech = short_speech(speech_wav, tmp_path_factory.mktemp("speech") / "speech.wav", 0.6)
    portrait = shared_media / "portraits" / "obama.jpg"
    actor = RenderActor(str(random_tiny_checkpoint), str(out), "run", storage.StorageOptions(), device="cpu")
    rows = [load_assets(manifest_row(i, framing, portrait, speech, framing), image_size=actor.size,
                        options=storage.StorageOptions(), max_side=256) for i, framing in enumerate(("portrait", "crop"))]
    assert [r["status"] for r in rows] == ["pending"] * 2, [r["error"] for r in rows]
    results = pd.concat(list(actor(pd.DataFrame([dict(r) for r in rows])))).set_index("id")  # one frame per row
    assert list(results["status"]) == ["ok", "ok"], results["error"].tolist()
    return {"actor": actor, "rows": {r["id"]: r for r in rows}, "results": results, "portrait": portrait}


def test_portrait_framing_writes_the_whole_portrait_at_its_fitted_size(rendered):
    results, portrait = rendered["results"], load_image(rendered["portrait"])
    W, H = output_size(portrait.shape[1], portrait.shape[0], 256)
    assert (results.loc["portrait", "width"], results.loc["portrait", "height"]) == (W, H) == (204, 256)
    clip = read_video(results.loc["portrait", "output_uri"])
    assert clip.frames.shape[1:] == (H, W, 3)
    from faces.composite import Compositor

    plan = rendered["rows"]["portrait"]
    c = Compositor.from_plan(plan, rendered["actor"].size)
    assert min(psnr_outside(f, c.frame, c.alpha, margin=8) for f in clip.frames) >= 40.0
    assert json.loads(plan["composite_json"])["face_upscaled"] is False
    assert plan["face_upscaled"] is False and rendered["rows"]["crop"]["face_upscaled"] is False


def test_crop_framing_gives_the_aligned_crop_video_exactly(rendered, tmp_path):
    """`--framing crop` is the renderer's output before framing existed: the generator's crops, encoded as they are."""
    import torch

    from media import Mp4Writer
    from model import RenderRequest
    from model.frames import images_to_tensor, tensor_to_images

    results, actor, row = rendered["results"], rendered["actor"], rendered["rows"]["crop"]
    assert (results.loc["crop", "width"], results.loc["crop", "height"]) == (128, 128)
    crop = np.frombuffer(row["portrait_rgb"], np.uint8).reshape(128, 128, 3)
    audio = np.frombuffer(row["audio_pcm"], np.float32)
    request = RenderRequest(images_to_tensor(crop), torch.from_numpy(audio.copy()), 25.0)
    writer = Mp4Writer(tmp_path / "today.mp4", 25.0)
    for t, frames in enumerate(actor.generator.stream([request])):
        if t == row["num_frames"]:
            break
        writer.add(tensor_to_images(frames)[0])
    writer.close(audio)
    np.testing.assert_array_equal(read_video(results.loc["crop", "output_uri"]).frames, read_video(tmp_path / "today.mp4").frames)


def test_a_framing_cell_other_than_portrait_or_crop_fails_its_row(tmp_path):
    from pipelines.manifest import validate_rows

    df = pd.DataFrame({"id": ["p", "c", "empty", "bad"], "portrait": "p.png", "audio": "a.wav",
                       "framing": ["portrait", "crop", "", "full"]})
    rows, failures = validate_rows(df, str(tmp_path / "m.csv"))
    assert [(r.id, r.framing) for r in rows] == [("p", "portrait"), ("c", "crop"), ("empty", None)]
    assert [f.error for f in failures] == ["row 3 (id 'bad'): framing must be one of ('portrait', 'crop') or empty"]


def test_framing_and_max_side_options_are_validated_naming_the_option(tmp_path):
    from jobs.render import build_parser
    from pipelines.render import ConfigError, RenderConfig

    manifest, out = str(tmp_path / "m.jsonl"), str(tmp_path / "out")
    assert RenderConfig(manifest, out).framing == "portrait" and RenderConfig(manifest, out).max_side == 1024
    with pytest.raises(ConfigError, match="--framing must be one of portrait, crop, got 'full'"):
        RenderConfig(manifest, out, framing="full")
    with pytest.raises(ConfigError, match="--max-side must be an integer of at least 16"):
        RenderConfig(manifest, out, max_side=8)
    args = build_parser().parse_args([manifest, "--output", out, "--framing", "crop", "--max-side", "512"])
    assert (args.framing, args.max_side) == ("crop", 512)
    with pytest.raises(SystemExit):
        build_parser().parse_args([manifest, "--output", out, "--framing", "full"])
