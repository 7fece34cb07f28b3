"""Training shards: the one on-disk format both data sources write (synthetic.py, prepare.py) and the
training loops read.

A data set is a folder:

    dataset.json                 {"format": 1, "image_size", "fps", "clip_frames", "sample_rate",
                                  "controls": [...], "shards": [...], "source": {...}}
    shard-00000/portraits.npy    (C, S, S, 3) uint8   the reference (identity) frame of each clip
    shard-00000/frames.npy       (C, F, S, S, 3) uint8 the clip's frames, canonical crops
    shard-00000/audio.npy        (C, N) float32        16 kHz mono speech under the clip, N = F / fps * 16000
    shard-00000/controls.npy     (C, F, K) float32     per-frame FCIC labels, NaN where unknown
    shard-00000/clips.jsonl      one JSON object per clip: where it came from

Plain .npy files so that training memory-maps them instead of loading a data set bigger than RAM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
ARRAYS = ("portraits", "frames", "audio", "controls")


class DatasetError(ValueError):
    """A data-set folder that cannot be read: missing files, wrong shapes, wrong format version."""


@dataclass
class Clip:
    portrait: np.ndarray  # (S, S, 3) uint8
    frames: np.ndarray  # (F, S, S, 3) uint8
    audio: np.ndarray  # (N,) float32
    controls: np.ndarray  # (F, K) float32
    info: dict


def write_shard(directory: Path, clips: list[Clip]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ARRAYS:
        np.save(directory / f"{name}.npy", np.stack([getattr(c, name if name != "portraits" else "portrait") for c in clips]))
    with open(directory / "clips.jsonl", "w") as f:
        for clip in clips:
            f.write(json.dumps(clip.info, sort_keys=True) + "\n")


def write_manifest(root: Path, *, image_size: int, fps: float, clip_frames: int, sample_rate: int,
                   controls: list[str], shards: list[str], source: dict) -> None:
    manifest = {"format": FORMAT_VERSION, "image_size": image_size, "fps": fps, "clip_frames": clip_frames,
                "sample_rate": sample_rate, "controls": list(controls), "shards": list(shards), "source": source}
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


class ClipDataset:
    """Random access to every clip of a data-set folder; arrays are memory-mapped."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest_path = self.root / "dataset.json"
        if not manifest_path.is_file():
            raise DatasetError(f"{self.root}: no dataset.json (build one with `eartalk train --dataset synthetic` "
                               f"or `eartalk prepare`)")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT_VERSION:
            raise DatasetError(f"{manifest_path}: format {self.manifest.get('format')!r}, expected {FORMAT_VERSION}")
        self.image_size = int(self.manifest["image_size"])
        self.fps = float(self.manifest["fps"])
        self.clip_frames = int(self.manifest["clip_frames"])
        self.sample_rate = int(self.manifest["sample_rate"])
        self.controls: list[str] = list(self.manifest["controls"])
        self._shards = []
        for name in self.manifest["shards"]:
            shard = {}
            for array in ARRAYS:
                path = self.root / name / f"{array}.npy"
                if not path.is_file():
                    raise DatasetError(f"{path}: missing")
                shard[array] = np.load(path, mmap_mode="r")
            count = len(shard["frames"])
            expected = {"portraits": (count, self.image_size, self.image_size, 3),
                        "frames": (count, self.clip_frames, self.image_size, self.image_size, 3),
                        "controls": (count, self.clip_frames, len(self.controls))}
            for array, shape in expected.items():
                if tuple(shard[array].shape) != shape:
                    raise DatasetError(f"{self.root / name / array}.npy: shape {shard[array].shape}, expected {shape}")
            self._shards.append(shard)
        self._index = [(s, i) for s, shard in enumerate(self._shards) for i in range(len(shard["frames"]))]
        if not self._index:
            raise DatasetError(f"{self.root}: the data set has no clips")

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> Clip:
        s, i = self._index[index]
        shard = self._shards[s]
        return Clip(portrait=np.asarray(shard["portraits"][i]), frames=np.asarray(shard["frames"][i]),
                    audio=np.asarray(shard["audio"][i]), controls=np.asarray(shard["controls"][i]), info={})

    def frames_pool(self) -> list[tuple[int, int]]:
        """(shard, clip) pairs, for samplers that draw single frames (the VAE stage)."""
        return list(self._index)
