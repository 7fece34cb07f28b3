"""benchmarks/streaming.py's FLOPs per frame: the counted figures against the architecture's own arithmetic."""

from __future__ import annotations

from dataclasses import replace

from model import Generator, get_preset


def transformer_flops(cfg, block_tokens: int) -> int:
    """Multiply-adds x 2 of one steady-state decode step: per layer the qkv, output and MLP projections of
    the block's tokens, and attention (scores and weighted values) over sink + window blocks of keys."""
    d, Pb = cfg.d_model, block_tokens
    keys = (cfg.sink_frames + cfg.window_frames) * Pb
    hidden = int(d * cfg.mlp_ratio)
    per_layer = 2 * Pb * d * 3 * d + 2 * Pb * d * d + 2 * 2 * Pb * d * hidden + 2 * 2 * Pb * keys * d
    return cfg.n_layers * per_layer


def test_transformer_flops_count_attention_over_the_full_window(streaming_bench):
    """Regression: on the CPU, FlopCounterMode has no formula for PyTorch's masked-attention kernel and
    counted the transformer without its attention."""
    cfg = get_preset("tiny", n_layers=2, window_frames=3)
    g = Generator(cfg).eval()
    flops = streaming_bench.step_flops(g)
    assert flops["transformer"] == transformer_flops(cfg, g.block_tokens)
    assert flops["head"] == 2 * cfg.frame_tokens * cfg.d_model * cfg.token_features  # one linear per token


def test_flops_per_frame_splits_both_heads(streaming_bench):
    cfg = get_preset("tiny", n_layers=1, flow_steps=2)
    out = streaming_bench.flops_per_frame(cfg)
    assert out["total_regression"] == out["transformer"] + out["head_regression"] + out["decoder"]
    assert out["total_flow"] == out["transformer"] + out["head_flow"] + out["decoder"]
    # the flow head's hidden-state part runs once per token, its MLP once per Euler step: linear in the steps
    four, six = (streaming_bench.flops_per_frame(replace(cfg, flow_steps=n)) for n in (4, 6))
    assert six["head_flow"] - four["head_flow"] == four["head_flow"] - out["head_flow"] > 0
    assert four["decoder"] == out["decoder"] > 0 and four["transformer"] == out["transformer"]
