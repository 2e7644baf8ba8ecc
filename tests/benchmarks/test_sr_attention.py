"""benchmarks/sr_attention.py: its attention-traffic floor counts what the model's attention calls really move,
its bound arithmetic, and a CPU run end to end (the GPU figures are in README / docs/SR.md)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from videopoet.model.sr import SRConfig, SRTransformer

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "sr_attention.py"
_spec = importlib.util.spec_from_file_location("sr_attention_bench", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("full", [False, True])
def test_attention_floor_counts_the_q_k_v_of_every_sdpa_call(monkeypatch, full):
    """The floor is 2 bytes x 6 x (query + key elements) per SDPA call (forward q o k v, backward q o dO dq k v
    dk dv), counted here on the calls one forward of the model makes: windowed and full move the same bytes."""
    cfg = SRConfig.from_name("debug")
    grid, batch, text_len = (3, 16, 16), 2, 5
    if full:
        cfg = bench.full_attention_config(cfg, grid)
    seen = []
    sdpa = F.scaled_dot_product_attention

    def counting(q, k, v, *args, **kwargs):
        seen.append(2 * 6 * (q.numel() + k.numel()))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    torch.manual_seed(0)
    model = SRTransformer(cfg)
    T, H, W = grid
    codes = 2**cfg.visual_bits
    hr = torch.randint(0, codes, (batch, T, H, W))
    lr = torch.randint(0, codes, (batch, T, H // 2, W // 2))
    text = torch.randn(batch, text_len, cfg.text_dim)
    with torch.no_grad():
        model(
            hr, torch.rand(batch, T, H, W) < 0.5, lr, text=text, text_mask=torch.ones(batch, text_len).bool()
        )
    assert len(seen) == 2 * cfg.n_layer + cfg.n_block
    assert sum(seen) == bench.attention_floor_bytes(cfg, grid, batch, text_len)


def test_attention_bound_arithmetic():
    prof = {
        "windowed": {"kernel_ms": 140.0, "by_class_ms": {"attention": 30.0, "matmul": 70.0}},
        "full": {"kernel_ms": 330.0, "by_class_ms": {"attention": 220.0}},
    }
    b = bench.attention_bound(prof, floor_bytes=20 * 10**9, bandwidth=2e12)
    assert b["shared_ms"] == pytest.approx(110.0)
    assert b["attention_floor_ms"] == pytest.approx(10.0)
    assert b["kernel_ratio"] == pytest.approx(330 / 140)
    assert b["ratio_if_free"] == pytest.approx(3.0)
    assert b["ratio_at_floor"] == pytest.approx(2.75)


def test_the_benchmark_runs_on_cpu(tmp_path):
    out = bench.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--json", str(tmp_path / "r.json")])
    assert tuple(out["windows"]["full"][0][0]) == (3, 16, 16)  # the CPU default grid, one window
    assert out["windowed_over_full"] > 0
    for path in out["paths"].values():
        assert all(math.isfinite(v) for v in path["losses"])
    assert (tmp_path / "r.json").exists()
