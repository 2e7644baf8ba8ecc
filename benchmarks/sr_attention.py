"""Forward + backward throughput of the SR transformer with windowed attention against full attention, same run.

    python benchmarks/sr_attention.py                                   # base size, (5, 56, 32) grid, batch 2, one GPU
    python benchmarks/sr_attention.py --compile --compile-mode reduce-overhead --batch 4 --profile 20
    python benchmarks/sr_attention.py --size small --batch 4 --compile
    python benchmarks/sr_attention.py --device cpu                      # tiny CPU check (debug size, (3, 16, 16))

Both models are the same `model.sr.SRTransformer` with the same weights; they differ only in their windows:
- windowed: the paper's windows for a 2x stage, (1, 56, 4) vertical, (1, 8, 32) horizontal, (5, 8, 8)
  temporal self-attention, and LR cross-attention windows of half the spatial size (the default config);
- full: every window as large as the grid, i.e. global self-attention over all T x H x W HR tokens and
  global cross-attention to all LR tokens in every layer (the same SDPA code path with one window).
One step is the training loss (masked-token cross-entropy on a cosine-schedule-like mask of 64% of the
positions, 64 caption embeddings, bf16 autocast on CUDA) and its backward, no optimizer; tokens/s counts
HR positions (batch x T x H x W). Reported: tokens/s of each, the windowed / full ratio (the target is
>= 3x on the (5, 56, 32) grid), s/step, peak GPU memory, and both models' losses (first -> last step).
`--compile` compiles every block with static shapes (the two models share the block code; a dynamic-shape
recompile for the second grid is slower and crashed once); `--compile-mode reduce-overhead` adds CUDA graphs,
which take the launch gaps out of the short windowed step; `--profile N` prints one step's GPU kernel time by
class (matmul, attention, fused elementwise, other) and the top N kernels of each model, then what bounds the
ratio: the windowed step less its attention kernels is work both models share, so the ratio cannot beat
full / shared even with free windowed attention, nor full / (shared + floor) with the windowed attention at its
memory-traffic floor (q, k, v, o and their gradients moved once, at a copy bandwidth measured in the same run).
Both models stay resident and their steps alternate (warm-up steps of both first), so one-time costs and
changes of the machine's load during the run fall on both alike.

Runs from the repository root without installing the package (the root is added to sys.path when
`import videopoet` fails); needs only torch, numpy, einops, pyyaml, safetensors and fsspec.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

try:
    import videopoet  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from videopoet.model.sr import SRConfig, SRTransformer, window_grid  # noqa: E402


def make_batches(cfg: SRConfig, grid, batch: int, text_len: int, n: int, device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    T, H, W = grid
    s = cfg.scale
    codes = 2**cfg.visual_bits
    out = []
    for _ in range(n):
        out.append(
            {
                "hr": torch.randint(0, codes, (batch, T, H, W), generator=g).to(device),
                "mask": (torch.rand(batch, T, H, W, generator=g) < 0.64).to(device),
                "lr": torch.randint(0, codes, (batch, T, H // s, W // s), generator=g).to(device),
                "text": torch.randn(batch, text_len, cfg.text_dim, generator=g).to(device),
                "text_mask": torch.ones(batch, text_len, dtype=torch.bool).to(device),
            }
        )
    return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loss_step(model: SRTransformer, b: dict, device) -> float:
    """One forward + backward of the training loss (no optimizer); returns the loss."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = model.loss(b["hr"], b["mask"], b["lr"], text=b["text"], text_mask=b["text_mask"])
    out.loss.backward()
    model.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def measure(models: dict[str, SRTransformer], batches: list[dict], steps: int, warmup: int, device) -> dict:
    """Seconds per step of each model, timed in alternation (step i of every model, then step i + 1), so a
    change in the machine's load or clocks during the run affects both alike; warm-up steps of all first."""
    out = {name: {"losses": [], "seconds": 0.0} for name in models}
    for i in range(warmup):
        for name, model in models.items():
            out[name]["losses"].append(loss_step(model, batches[i % len(batches)], device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(steps):
        b = batches[(warmup + i) % len(batches)]
        for name, model in models.items():
            _sync(device)
            t0 = time.perf_counter()
            out[name]["losses"].append(loss_step(model, b, device))
            _sync(device)
            out[name]["seconds"] += time.perf_counter() - t0
    for r in out.values():
        r["sec_per_step"] = r.pop("seconds") / steps
    return out


def sdpa_backend(name: str):
    """A context restricting `scaled_dot_product_attention` to one kernel family (`auto`: no restriction)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if name == "auto":
        return contextlib.nullcontext()
    kinds = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}
    kinds["efficient"] = SDPBackend.EFFICIENT_ATTENTION
    # the text cross-attention has a key mask, which only the memory-efficient / math kernels take
    return sdpa_kernel([kinds[name], SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def kernel_kind(name: str) -> str:
    """Coarse class of a CUDA kernel by its name (for `--profile`)."""
    n = name.lower()
    # cuDNN's backward helpers (dO.O row sums, fp32 dQ -> bf16) are attention work too
    if any(
        k in n for k in ("flash", "fmha", "attention", "cudnn_generated", "sdpa", "dot_do_o", "convert_dq")
    ):
        return "attention"
    if any(k in n for k in ("gemm", "xmma", "cublas", "nvjet", "cutlass", "matmul")):
        return "matmul"
    if "triton" in n:
        return "triton (fused)"
    return "other"


def full_attention_config(cfg: SRConfig, grid) -> SRConfig:
    """`cfg` with every window as large as `grid`: global self- and LR cross-attention in every layer."""
    return dataclasses.replace(cfg, window_vertical=grid, window_horizontal=grid, window_temporal=grid)


def attention_floor_bytes(cfg: SRConfig, grid, batch: int, text_len: int) -> int:
    """Bytes the attention of one training step must move at least, the same for windowed and full attention.

    Every attention call reads q, k, v and writes o in the forward, and reads q, k, v, o, dO and writes dq, dk,
    dv in the backward, each once, 2 bytes per value (the softmax statistics are left out): what a kernel that
    keeps everything else on chip would move. Windows change which keys a query sees, not how many q, k, v
    there are: per layer one self-attention (N queries, N keys) and one LR cross-attention (N / s^2 keys), per
    block one text cross-attention (1 + text_len keys per sample), N = batch x T x H x W.
    """
    n = batch * grid[0] * grid[1] * grid[2]

    def call(nq: int, nk: int) -> int:
        # per query q o (forward) + q o dO dq (backward), per key k v + k v dk dv: 6 values of d_model each
        return 6 * (nq + nk) * cfg.d_model * 2

    lr = call(n, n // cfg.scale**2)
    return cfg.n_layer * (call(n, n) + lr) + cfg.n_block * call(n, batch * (1 + text_len))


def copy_bandwidth(device, gib: float = 1.0) -> float:
    """Bytes/s of a device-to-device copy of `gib` GiB (read + write counted), measured now on `device`."""
    x = torch.empty(int(gib * 2**30) // 2, dtype=torch.bfloat16, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    _sync(device)
    return 2 * x.nbytes * 10 / (time.perf_counter() - t0)


def attention_bound(prof: dict, floor_bytes: int, bandwidth: float) -> dict:
    """What bounds the windowed / full ratio, from one profiled step of each (`profile_step`'s result).

    The windowed step without its attention kernels is work both models do alike (projections, MLP, norms,
    RoPE, embeddings, loss); the ratio cannot beat full / that, even if the windowed attention cost nothing,
    and at the attention's memory-traffic floor (`attention_floor_bytes` at the measured copy bandwidth) it
    is full / (that + floor).
    """
    w, f = prof["windowed"], prof["full"]
    attn = w["by_class_ms"].get("attention", 0.0)
    shared = w["kernel_ms"] - attn
    floor_ms = floor_bytes / bandwidth * 1e3
    return {
        "windowed_attention_ms": attn,
        "full_attention_ms": f["by_class_ms"].get("attention", 0.0),
        "shared_ms": shared,
        "attention_floor_gb": floor_bytes / 1e9,
        "copy_bandwidth_tb_s": bandwidth / 1e12,
        "attention_floor_ms": floor_ms,
        "kernel_ratio": f["kernel_ms"] / w["kernel_ms"],
        "ratio_if_free": f["kernel_ms"] / shared,
        "ratio_at_floor": f["kernel_ms"] / (shared + floor_ms),
    }


def profile_step(models: dict[str, SRTransformer], b: dict, device, top: int) -> dict:
    """GPU time of one training step of each model by kernel class, and the `top` kernels of each."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, model in models.items():
        loss_step(model, b, device)  # warm
        _sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            loss_step(model, b, device)
            _sync(device)
        kinds: dict[str, float] = {}
        rows = []
        for e in prof.key_averages():
            us = getattr(e, "device_time_total", 0.0) or getattr(e, "cuda_time_total", 0.0)
            if us <= 0 or e.key.startswith("ProfilerStep"):
                continue
            kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + us / 1e3
            rows.append((us / 1e3, e.count, e.key))
        rows.sort(reverse=True)
        total = sum(kinds.values())
        print(
            f"\n{name}: {total:.1f} ms of kernels in one step; by class: "
            + ", ".join(
                f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])
            )
        )
        for ms, count, key in rows[:top]:
            print(f"  {ms:8.2f} ms {count:5d}x  {key[:110]}")
        out[name] = {"kernel_ms": total, "by_class_ms": kinds, "top": [list(r) for r in rows[:top]]}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    p.add_argument("--size", default=None, help="SR size: debug, small, base (default: base; debug on cpu)")
    p.add_argument(
        "--grid", type=int, nargs=3, default=None, help="HR token grid T H W (default 5 56 32; cpu 3 16 16)"
    )
    p.add_argument("--batch", type=int, default=None, help="samples per step (default 2; cpu 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per model (default 10; cpu 3)")
    p.add_argument(
        "--warmup", type=int, default=None, help="untimed steps per model first (default 3; cpu 1)"
    )
    p.add_argument("--text-len", type=int, default=64, help="caption embeddings per sample")
    p.add_argument("--activation-checkpointing", action="store_true", help="recompute each block in backward")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (both models)")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"],
        help="torch.compile mode with --compile (reduce-overhead: CUDA graphs)",
    )
    p.add_argument(
        "--residual-dtype",
        default=None,
        choices=["autocast", "float32"],
        help="residual stream dtype under autocast (default: the size's config)",
    )
    p.add_argument(
        "--sdpa-backend",
        default="auto",
        choices=["auto", "flash", "cudnn", "efficient"],
        help="restrict SDPA to one kernel family (both models; auto: PyTorch's choice)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also print GPU time by kernel class and the top N kernels",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev)
    cpu = device.type == "cpu"
    size = args.size or ("debug" if cpu else "base")
    grid = tuple(args.grid or ((3, 16, 16) if cpu else (5, 56, 32)))
    batch = args.batch or (1 if cpu else 2)
    steps = args.steps or (3 if cpu else 10)
    warmup = args.warmup if args.warmup is not None else (1 if cpu else 3)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    windowed_cfg = SRConfig.from_name(
        size, **({"residual_dtype": args.residual_dtype} if args.residual_dtype else {})
    )
    full_cfg = full_attention_config(windowed_cfg, grid)
    batches = make_batches(windowed_cfg, grid, batch, args.text_len, 4, device)
    results = {
        "size": size,
        "grid": list(grid),
        "batch": batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "compile": args.compile and args.compile_mode,
        "residual_dtype": windowed_cfg.residual_dtype,
        "activation_checkpointing": args.activation_checkpointing,
        "windows": {"windowed": window_grid(windowed_cfg, grid), "full": window_grid(full_cfg, grid)},
    }
    torch.manual_seed(0)
    models = {}
    for name, cfg in (("windowed", windowed_cfg), ("full", full_cfg)):
        with torch.device(device):
            model = SRTransformer(cfg)
        if models:  # the same weights: only the attention windows differ
            model.load_state_dict(models["windowed"].state_dict())
        model.gradient_checkpointing = args.activation_checkpointing
        if args.compile:  # static shapes: the two models' grids differ, a dynamic recompile would serve both
            for block in model.blocks:
                block.compile(dynamic=False, mode=args.compile_mode)
        models[name] = model.train()
    results["params"] = models["windowed"].num_params()
    results["sdpa_backend"] = args.sdpa_backend
    with sdpa_backend(args.sdpa_backend):
        paths = measure(models, batches, steps, warmup, device)
        if args.profile and device.type == "cuda":
            results["profile"] = profile_step(models, batches[0], device, args.profile)
            floor = attention_floor_bytes(windowed_cfg, grid, batch, args.text_len)
            b = results["bound"] = attention_bound(results["profile"], floor, copy_bandwidth(device))
            print(
                f"\nwindowed attention kernels (with backward helpers) {b['windowed_attention_ms']:.1f} ms, "
                f"full {b['full_attention_ms']:.1f} ms; the windowed attention's memory floor: "
                f"{b['attention_floor_gb']:.1f} GB at {b['copy_bandwidth_tb_s']:.2f} TB/s (copy, measured now) "
                f"= {b['attention_floor_ms']:.1f} ms\nwork both models share (windowed step less its attention): "
                f"{b['shared_ms']:.1f} ms\nkernel-time ratio {b['kernel_ratio']:.2f}x; "
                f"{b['ratio_if_free']:.2f}x if the windowed attention cost nothing, "
                f"{b['ratio_at_floor']:.2f}x at its memory floor"
            )
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    tokens = batch * grid[0] * grid[1] * grid[2]
    print(
        f"\nSR {size} ({results['params'] / 1e6:.1f}M params), grid {grid} x batch {batch}, {results['device']}"
    )
    for name in paths:
        hr = ", ".join(str(w[0]) for w in results["windows"][name])
        print(f"  {name:<9} windows {hr}")
    print(f"{'attention':<10} {'tokens/s':>12} {'s/step':>9}  first -> last loss")
    for name, r in paths.items():
        r["tokens_per_s"] = tokens / r["sec_per_step"]
        print(
            f"{name:<10} {r['tokens_per_s']:>12,.0f} {r['sec_per_step']:>9.4f}  "
            f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"
        )
    if peak is not None:
        results["peak_mem_gib"] = peak
        print(f"peak GPU memory (both models resident): {peak:.1f} GiB")
    ratio = paths["windowed"]["tokens_per_s"] / paths["full"]["tokens_per_s"]
    results["windowed_over_full"] = ratio
    print(f"windowed / full forward+backward throughput: {ratio:.2f}x (target >= 3x on (5, 56, 32))")
    results["paths"] = paths
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
