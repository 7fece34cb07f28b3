"""Sink Frame Window Attention: the mask, the cache, and cached streaming against the full pass."""

from __future__ import annotations

import pytest
import torch

from model import KVCache, sfa_mask
from tests.model.conftest import request, small_generator


def brute_force_mask(blocks: int, block_tokens: int, sinks: int, window: int) -> torch.Tensor:
    T = blocks * block_tokens
    mask = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(T):
            qb, kb = i // block_tokens, j // block_tokens
            is_sink = kb < sinks
            in_window = qb - window < kb <= qb
            mask[i, j] = kb <= qb and (is_sink or in_window)
    return mask


@pytest.mark.parametrize("blocks, block_tokens, sinks, window", [(1, 3, 1, 1), (6, 2, 1, 2), (9, 3, 2, 3), (12, 1, 1, 4), (7, 2, 3, 8)])
def test_sfa_mask_equals_brute_force(blocks, block_tokens, sinks, window):
    assert torch.equal(sfa_mask(blocks, block_tokens, sinks, window), brute_force_mask(blocks, block_tokens, sinks, window))


def stream_latents(g, req) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the cached path block by block, returning (ref, streamed latents, audio tokens, control tokens)."""
    F = g.num_frames(req.audio.numel(), req.fps)
    with torch.no_grad():
        ref = g.vae.encode(req.portrait[None])
        audio, controls = g.condition_tokens([req], F)
        cache = g.new_cache(1)
        g.transformer.forward_cached(g.reference_block(ref), cache, block=0)
        prev, out = ref, []
        for t in range(F):
            block = g.frame_blocks(prev[:, None], audio[:, t : t + 1], controls[:, t : t + 1])[:, 0]
            hidden = g.transformer.forward_cached(block, cache, block=t + 1)[:, None]
            prev = g.predict_latents(hidden, ref, audio[:, t : t + 1])[:, 0]
            out.append(prev)
    return ref, torch.stack(out, 1), audio, controls


@pytest.mark.parametrize("sinks, window, frames", [(1, 3, 20), (2, 3, 17), (1, 1, 6), (3, 5, 24), (1, 8, 5)])
def test_cached_streaming_equals_full_pass_under_the_sfa_mask(sinks, window, frames):
    g = small_generator(sink_frames=sinks, window_frames=window)
    ref, streamed, audio, controls = stream_latents(g, request(g, frames))
    with torch.no_grad():
        prev = torch.cat((ref[:, None], streamed[:, :-1]), dim=1)
        full = g.forward_full(ref, prev, audio, controls)
    assert (full - streamed).abs().max().item() < 1e-4


def test_the_audio_mouth_path_streams_like_the_full_pass_and_moves_only_the_mouth_cells():
    from model.face_regions import region_cells

    g = small_generator(audio_mouth=True)
    torch.nn.init.normal_(g.audio_mouth.weight, std=0.05)  # it starts at zero in training
    ref, streamed, audio, controls = stream_latents(g, request(g, 12))
    with torch.no_grad():
        prev = torch.cat((ref[:, None], streamed[:, :-1]), dim=1)
        full = g.forward_full(ref, prev, audio, controls)
        torch.nn.init.zeros_(g.audio_mouth.weight)
        without = g.forward_full(ref, prev, audio, controls)
    assert (full - streamed).abs().max().item() < 1e-4
    moved = (full - without).abs().amax(dim=(0, 1, 2)) > 1e-6  # (L, L) cells the path changed
    assert torch.equal(moved, region_cells(ref.shape[-1]).bool())

def test_stream_yields_the_decoded_streamed_latents():
    generator = small_generator(mouth_magnification=1.0)  # decoded as predicted (test_mouth_motion.py: magnified)
    req = request(generator, 8)
    _, streamed, _, _ = stream_latents(generator, req)
    frames = torch.stack(list(generator.stream([req])), dim=1)  # (1, F, 3, S, S)
    with torch.no_grad():
        decoded = generator.decode_latents(streamed, req.portrait[None])
    assert frames.shape == decoded.shape and (frames - decoded).abs().max().item() < 1e-5


def test_kv_cache_memory_is_the_same_at_frame_100_and_2000(generator):
    cache = generator.new_cache(batch=2)
    tokens = torch.randn(2, generator.block_tokens, generator.config.d_model)
    sizes = {}
    with torch.no_grad():
        for block in range(2001):
            if block <= 120:  # the full attention path while the ring fills and wraps
                generator.transformer.forward_cached(tokens, cache, block)
            else:  # then the cache's own bookkeeping and writes, which is all that could grow
                meta = cache.step(block)
                for layer in cache.layers:
                    layer.write(meta, layer.keys[:, :, : generator.block_tokens], layer.values[:, :, : generator.block_tokens])
            if block in (100, 2000):
                sizes[block] = (cache.nbytes, [tuple(c.keys.shape) for c in cache.layers], len(cache.slot_block),
                                tuple(meta.key_positions.shape) if block > 120 else None)
    assert sizes[100][:3] == sizes[2000][:3]
    assert sizes[2000][3] == (2, cache.slots * generator.block_tokens)  # per row: (B, ring * Pb)


def test_positions_never_leave_the_cache_span():
    cache = KVCache(n_layers=1, batch=1, n_heads=1, head_dim=2, block_tokens=1, sinks=2, window=3)
    for block in range(50):
        meta = cache.step(block)
        assert int(meta.query_positions.max()) <= 2 + 3 - 1
        assert int(meta.key_positions[meta.key_valid].max()) <= int(meta.query_positions.min())
    # worked example of kv_cache.py: block 10 with S=2, W=3 sees blocks {0, 1} + {8, 9, 10} at {0, 1} + {2, 3, 4}
    cache = KVCache(n_layers=1, batch=1, n_heads=1, head_dim=2, block_tokens=1, sinks=2, window=3)
    for block in range(11):
        meta = cache.step(block)
    seen = {b: int(p) for b, p, v in zip(cache.slot_block, meta.key_positions[0], meta.key_valid[0]) if v}
    assert seen == {0: 0, 1: 1, 8: 2, 9: 3, 10: 4}
