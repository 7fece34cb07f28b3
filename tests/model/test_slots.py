"""Continuous batching (model/slots.py): videos in slots, refilled as others end, equal videos rendered alone."""

from __future__ import annotations

import math

import pytest
import torch

from model import KVCache
from model.flow_head import TokenNoise
from model.mouth_motion import magnify, motion_rates, mouth_cells, start_motion
from tests.model.conftest import request, small_generator
from tests.model.test_flow_head import flow_generator

LENGTHS = (3, 17, 40, 9, 5)  # frames: very different lengths, more videos than slots


def alone(g, r) -> torch.Tensor:
    """(F, 3, S, S): the reference path, one video through `rollout` (the training path's loop, no slots),
    each latent decoded as mouth_motion.py shows it (the config's magnification, this video's fps)."""
    F = g.num_frames(r.audio.numel(), r.fps)
    with torch.no_grad():
        ref = g.vae.reference(r.portrait[None])
        audio, controls = g.condition_tokens([r], F)
        noise = TokenNoise([r.seed]) if g.config.head == "flow" else None
        motion, rates = start_motion(ref.latent), motion_rates(r.fps)[None]
        cells = mouth_cells(g.config.latent_size)
        shown = []
        for latent in g.rollout(ref.latent, audio, controls, noise):
            frame, motion = magnify(latent, motion, rates, cells, g.config.mouth_magnification)
            shown.append(frame)
        return g.decode_latents(torch.stack(shown, dim=1), r.portrait[None])[0]


def requests(g) -> list:
    reqs = []
    for i, F in enumerate(LENGTHS):
        yaw = torch.full((F,), math.nan)
        yaw[F // 2 :] = 20.0 * (-1) ** i  # a control from mid-video on
        r = request(g, F, fps=(25.0, 30.0)[i % 2], seed=i, controls={"yaw": yaw, "blink": torch.rand(F)})
        r.seed = 100 + i  # the flow head's noise seed, its own per video
        reqs.append(r)
    return reqs


def continuous(g, reqs, slots: int) -> tuple[dict[int, torch.Tensor], int, list[int]]:
    """Each video's frames rendered in `slots` slots, a slot refilled the step after its video ends.
    Returns the videos, the frames computed, and how many slots were busy at each step."""
    stream = g.slots(slots)
    todo = list(enumerate(reqs))
    frames: dict[int, list[torch.Tensor]] = {}
    busy = []
    while todo or len(stream):
        while todo and stream.free:
            key, r = todo.pop(0)
            stream.add(r, key=key)
        busy.append(len(stream))
        out = stream.step()
        for key, index, frame in zip(out.keys, out.indices, out.frames):
            assert index == len(frames.setdefault(key, []))  # each video's frames come in order
            frames[key].append(frame)
    return {k: torch.stack(v) for k, v in frames.items()}, stream.frames_computed, busy


def greedy_steps(lengths: list[int], slots: int) -> int:
    """Steps of list scheduling: each video starts in the first slot to come free, the step its last one ends."""
    ends = [0] * slots
    for F in lengths:
        i = ends.index(min(ends))
        ends[i] += F
    return max(ends)


@pytest.mark.parametrize("make", [small_generator, flow_generator], ids=["regression", "flow"])
def test_every_video_in_slots_equals_the_video_rendered_alone(make):
    """The oracle of continuous batching: lengths 3 to 40 frames with controls and seeds, five videos in two
    slots; each equals its own rollout alone within the cache oracle's tolerance (1e-4)."""
    g = make()
    reqs = requests(g)
    videos, computed, busy = continuous(g, reqs, slots=2)
    for key, r in enumerate(reqs):
        expected = alone(g, r)
        assert videos[key].shape == expected.shape, key
        assert (videos[key] - expected).abs().max().item() < 1e-4, key
    lengths = [len(v) for v in videos.values()]
    assert computed == sum(lengths)  # no frame computed and thrown away
    assert len(busy) == greedy_steps([len(videos[k]) for k in range(len(reqs))], slots=2)  # refilled at once
    assert busy[: busy.index(1)] == [2] * busy.index(1) and set(busy[busy.index(1):]) == {1}  # idle only to drain
    if g.config.head == "flow":  # the seeds matter: the same video with another seed differs
        other = reqs[1]
        other.seed = 7
        assert (alone(g, other) - videos[1]).abs().max().item() > 1e-3


def test_stream_built_on_slots_keeps_its_lockstep_contract(generator):
    """Generator.stream yields B frames per step until the longest ends; a video that ended repeats its last."""
    reqs = [request(generator, 2), request(generator, 5, seed=1)]
    steps = torch.stack(list(generator.stream(reqs)), dim=1)  # (B, 5, 3, S, S)
    assert steps.shape[:2] == (2, 5)
    assert torch.equal(steps[0, 2], steps[0, 1]) and torch.equal(steps[0, 4], steps[0, 1])
    assert (steps[0, :2] - alone(generator, reqs[0])).abs().max().item() < 1e-4


def test_a_bad_request_fails_its_add_and_leaves_the_other_slots_untouched(generator):
    stream = generator.slots(2)
    good = request(generator, 4)
    stream.add(good, key="good")
    with pytest.raises(ValueError, match="unknown control 'smile'"):
        stream.add(request(generator, 4, controls={"smile": torch.zeros(4)}), key="bad")
    bad = request(generator, 4)
    bad.portrait = torch.rand(3, 32, 32)
    with pytest.raises(ValueError, match="portrait must be"):
        stream.add(bad)
    assert stream.busy == [0] and stream.free == [1]
    stream.add(request(generator, 1), key="one")
    with pytest.raises(RuntimeError, match="all 2 slots are busy"):
        stream.add(request(generator, 1))
    frames = [stream.step() for _ in range(4)]
    assert frames[0].keys == ["good", "one"] and frames[0].ended == [False, True] and frames[1].keys == ["good"]
    assert (torch.stack([f.frames[0] for f in frames]) - alone(generator, good)).abs().max().item() < 1e-4


def test_each_cache_row_keeps_its_own_positions_and_a_reset_row_starts_over():
    """Row 1 reset at block 9 of row 0: each row's metadata equals that of a cache holding that row alone."""
    kw = dict(n_layers=1, n_heads=1, head_dim=2, block_tokens=2, sinks=1, window=3)
    both, first, second = KVCache(batch=2, **kw), KVCache(batch=1, **kw), KVCache(batch=1, **kw)
    for block in range(10):
        both.step(block)
        first.step(block)
    both.reset(1)
    for k in range(6):
        meta = both.step([10 + k, k])
        for row, alone_cache, b in ((0, first, 10 + k), (1, second, k)):
            single = alone_cache.step(b)
            assert torch.equal(meta.key_positions[row], single.key_positions[0])
            assert torch.equal(meta.key_valid[row], single.key_valid[0])
            assert torch.equal(meta.query_positions[row], single.query_positions[0])
    meta = both.step([3], rows=[1])  # only row 1 decodes; row 0's bookkeeping is untouched
    assert meta.rows.tolist() == [1] and both.row_blocks[0].tolist() == first.row_blocks[0].tolist()
