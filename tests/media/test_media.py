"""media/: real decode and encode round trips (PyAV, Pillow, ffprobe) and clear errors on bad files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from media import MediaError, Mp4Writer, encode_mp4, load_audio, load_image, probe_video, read_video
from model import AUDIO_SAMPLE_RATE


def ffprobe(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def test_load_audio_resamples_48k_stereo_speech_to_16k_mono(shared_media):
    wav = shared_media / "speech" / "english.wav"
    samples = load_audio(wav)
    duration_s = float(ffprobe(wav)["format"]["duration"])
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(samples.size / AUDIO_SAMPLE_RATE - duration_s) < 0.01
    assert 0.01 < np.abs(samples).max() <= 1.0  # real speech, not silence


def test_load_audio_reads_the_audio_track_of_a_video(shared_media):
    samples = load_audio(shared_media / "video" / "talking_512px_8s.mp4")
    assert abs(samples.size / AUDIO_SAMPLE_RATE - 8.0) < 0.1


def test_load_audio_errors_name_the_file_and_cause(tmp_path, astronaut_png):
    with pytest.raises(MediaError, match="missing.wav: audio file not found"):
        load_audio(tmp_path / "missing.wav")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00not really a wave file" * 10)
    with pytest.raises(MediaError, match="garbage.wav: unreadable audio"):
        load_audio(garbage)
    with pytest.raises(MediaError, match="astronaut.png: (no audio stream|unreadable audio)"):
        load_audio(astronaut_png)
    empty = tmp_path / "empty.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(empty)], check=True)
    with pytest.raises(MediaError, match="empty.wav: (audio has zero length|unreadable audio)"):
        load_audio(empty)


def test_load_image_decodes_rgb_and_rejects_corrupt_files(shared_media, tmp_path):
    image = load_image(shared_media / "portraits" / "obama.jpg")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes((shared_media / "portraits" / "obama.jpg").read_bytes()[:200])
    with pytest.raises(MediaError, match="corrupt.jpg: corrupt or unsupported image"):
        load_image(corrupt)
    with pytest.raises(MediaError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")


def test_encode_mp4_round_trip_is_h264_aac_with_the_audio_duration(tmp_path, speech_wav):
    fps, seconds = 25, 1.2
    audio = load_audio(speech_wav)[: int(seconds * AUDIO_SAMPLE_RATE)]
    ramp = np.linspace(0, 255, 30, dtype=np.uint8)
    frames = [np.full((64, 64, 3), ramp[i], np.uint8) for i in range(30)]
    path = tmp_path / "clip.mp4"
    assert encode_mp4(path, frames, fps, audio) == 30

    streams = {s["codec_type"]: s for s in ffprobe(path)["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec_name"] == "aac"
    assert int(streams["video"]["nb_read_frames"]) == 30
    assert abs(float(streams["audio"]["duration"]) - seconds) < 1 / fps

    facts = probe_video(path)
    assert (facts["video_codec"], facts["audio_codec"], facts["width"], facts["frames"]) == ("h264", "aac", 64, 30)
    clip = read_video(path)
    assert clip.frames.shape == (30, 64, 64, 3) and clip.fps == fps
    # x264 at CRF 18 keeps flat frames within a few grey levels
    assert np.abs(clip.frames.mean(axis=(1, 2, 3)) - ramp.astype(float)).max() < 4
    assert abs(clip.audio.size - audio.size) < AUDIO_SAMPLE_RATE / fps


def test_mp4_writer_refuses_an_empty_video_and_probe_names_bad_files(tmp_path):
    with pytest.raises(MediaError, match="no frames to encode"):
        Mp4Writer(tmp_path / "empty.mp4", 25).close(np.zeros(1600, np.float32))
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"\x00" * 100)
    with pytest.raises(MediaError, match="bogus.mp4: unreadable video"):
        probe_video(bogus)
    with pytest.raises(MediaError, match="bogus.mp4: unreadable video"):
        read_video(bogus)


def test_load_image_refuses_a_decompression_bomb_as_too_large(tmp_path):
    """Regression: Pillow's DecompressionBombError (not an OSError) escaped load_image and aborted the render job."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    # a real PNG header announcing 20000 x 10000 RGB pixels: past Pillow's own limit, refused in Image.open
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 10_000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    with pytest.raises(MediaError, match="bomb.png: image too large"):
        load_image(bomb)


def test_a_16_bit_greyscale_portrait_keeps_its_tones(tmp_path, shared_media):
    """Pillow's convert("RGB") clips 16-bit values at 255; the loader scales them, so the face stays a face."""
    from PIL import Image

    grey = load_image(shared_media / "portraits" / "obama.jpg").mean(axis=2)  # (H, W) in 0..255
    path = tmp_path / "deep.png"
    Image.fromarray((grey * 257).round().astype(np.uint16)).save(path)  # 0..65535
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    assert loaded.shape == (*grey.shape, 3)
    assert np.abs(loaded[..., 0].astype(np.float64) - grey).max() <= 1.0


def cut_out(portrait: np.ndarray, mode: str):
    """`portrait` cut out to an ellipse as a `mode` PNG image whose transparent pixels hold random colours, with
    a half-transparent rim (not in P, whose transparency is all or nothing); and its alpha in 0..1."""
    from PIL import Image

    h, w = portrait.shape[:2]
    y, x = np.mgrid[:h, :w]
    r = np.hypot((x - w / 2) / (0.35 * w), (y - h / 2) / (0.45 * h))  # 1 on the ellipse
    alpha = np.where(r < 0.95, 1.0, np.where(r < 1.0, 100 / 255, 0.0))
    garbage = np.random.default_rng(0).integers(0, 256, portrait.shape, np.uint8)
    rgb = np.where((alpha > 0)[..., None], portrait, garbage)
    a8 = (alpha * 255).round().astype(np.uint8)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, a8])), rgb, alpha
    if mode == "LA":
        grey = np.asarray(Image.fromarray(rgb).convert("L"))
        return Image.fromarray(np.dstack([grey, a8])).convert("LA"), np.repeat(grey[..., None], 3, 2), alpha
    indexed = Image.fromarray(portrait).quantize(255)  # palette entries 0..254; 255 is the transparent one
    index = np.where(alpha == 1.0, np.asarray(indexed), 255).astype(np.uint8)
    palette = np.array(indexed.getpalette()[:255 * 3] + [255, 0, 255], np.uint8).reshape(-1, 3)  # magenta garbage
    image = Image.fromarray(index, "P")
    image.putpalette(palette.ravel().tolist())
    image.info["transparency"] = 255
    return image, palette[index], (alpha == 1.0).astype(np.float64)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_a_transparent_portrait_is_composited_onto_mid_grey(tmp_path, shared_media, mode):
    """Regression: convert("RGB") dropped alpha, so a cut-out portrait showed whatever colours its transparent
    pixels happened to hold (black, garbage) instead of a background."""
    from media.image import BACKGROUND

    portrait = load_image(shared_media / "portraits" / "obama.jpg")
    image, rgb, alpha = cut_out(portrait, mode)
    path = tmp_path / f"cut_out_{mode}.png"
    image.save(path)
    loaded = load_image(path).astype(np.float64)
    expected = rgb * alpha[..., None] + np.array(BACKGROUND, np.float64) * (1 - alpha[..., None])
    assert np.abs(loaded - expected).max() <= 1.0  # rounding of the half-transparent rim
    assert np.all(loaded[alpha == 0] == BACKGROUND) and np.all(loaded[alpha == 1] == rgb[alpha == 1])


def test_odd_sized_frames_encode_cropped_to_even_sides(tmp_path):
    frames = [np.full((65, 63, 3), 40 * i, np.uint8) for i in range(3)]
    path = tmp_path / "odd.mp4"
    assert encode_mp4(path, frames, 25, None) == 3
    video = ffprobe(path)["streams"][0]
    assert (video["width"], video["height"]) == (62, 64)
    assert read_video(path).frames.shape == (3, 64, 62, 3)


def test_a_failing_frame_source_leaves_no_partial_file(tmp_path):
    def frames():
        yield np.zeros((64, 64, 3), np.uint8)
        raise RuntimeError("the generator failed")

    path = tmp_path / "partial.mp4"
    with pytest.raises(RuntimeError, match="generator failed"):
        encode_mp4(path, frames(), 25, None)
    assert not path.exists()
    with pytest.raises(MediaError, match=r"frames must be \(H, W, 3\)"):
        encode_mp4(tmp_path / "rgba.mp4", [np.zeros((64, 64, 4), np.uint8)], 25, None)
    assert not (tmp_path / "rgba.mp4").exists()
