"""MAGVIT-v2 encode throughput: the tuned path (bf16 autocast, channels_last_3d, torch.compile) vs the same
model eager in fp32, same weights, same batch, same run. Prints clips/s and tokens/s of both and the ratio
(target on a GPU: >= 3x), plus how many tokens the tuned path encodes identically.

    python benchmarks/magvit_encode.py --size small                     # 17x128x128, batch 32, auto device
    python benchmarks/magvit_encode.py --size base --batch-size 16
    python benchmarks/magvit_encode.py --size debug --device cpu --frames 5 --height 32 --width 32 \\
        --batch-size 2 --iters 2 --warmup 1 --no-compile               # a CPU check that the script works

Weights are random (throughput does not depend on them; token agreement does a little). Run from the repo
root: without `pip install -e .` the root is put on sys.path. It needs torch, einops, safetensors, fsspec and
pyyaml, all in the GPU machines' image (KINDS.md); if one is missing there, carry it as a wheel: download it
into the git-ignored `.whl/` folder here (docs of the device tool) and start the command with
`python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/NAME*.whl && export PYTHONPATH=/tmp/site;`.
With the device tool (carry nothing else; the repo travels):

    run(command="PYTHONUNBUFFERED=1 python3 benchmarks/magvit_encode.py --size small", timeout_s=600)

Compilation of the first shape takes about a minute and is not timed.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

try:
    import videopoet  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`: the repo root is the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from videopoet.tokenizers.magvit2 import MagvitConfig, MagvitV2, indices_to_bits


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn, device: torch.device, iters: int, warmup: int) -> float:
    """Median seconds per call after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="small", help="named MAGVIT-v2 size: debug, small, base")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=32, help="clips per encode call")
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--iters", type=int, default=20, help="timed calls (the median is reported)")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed calls first (compilation, cudnn autotuning)"
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile the tuned encoder",
    )
    p.add_argument(
        "--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune-no-cudagraphs"
    )
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # the baseline is plain fp32
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    cfg = MagvitConfig.from_name(args.size)
    base = MagvitV2(cfg).to(device).eval()
    tuned = copy.deepcopy(base).channels_last_(True)
    if args.compile:
        tuned.encoder.compile(mode=args.compile_mode)
    x = torch.rand(args.batch_size, 3, args.frames, args.height, args.width, device=device) * 2 - 1
    tokens_per_clip = int(np.prod(base.latent_shape(args.frames, args.height, args.width)))

    def run_base():
        with torch.inference_mode():
            return base.encode(x)

    def run_tuned():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            return tuned.encode(x)

    t0 = time.perf_counter()
    codes_tuned = run_tuned()  # compiles (not timed)
    _sync(device)
    first_s = time.perf_counter() - t0
    codes_base = run_base()
    same_tokens = float((codes_tuned == codes_base).float().mean())
    same_bits = float(
        (indices_to_bits(codes_tuned, cfg.codebook_bits) == indices_to_bits(codes_base, cfg.codebook_bits))
        .float()
        .mean()
    )

    t_base = _timeit(run_base, device, args.iters, args.warmup)
    t_tuned = _timeit(run_tuned, device, args.iters, args.warmup)
    n = args.batch_size
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": args.size,
        "encoder_params": sum(p.numel() for p in base.encoder.parameters()),
        "clip": [args.frames, args.height, args.width],
        "tokens_per_clip": tokens_per_clip,
        "batch_size": n,
        "eager_fp32": {
            "s_per_batch": t_base,
            "clips_per_s": n / t_base,
            "tokens_per_s": n * tokens_per_clip / t_base,
        },
        "tuned": {
            "s_per_batch": t_tuned,
            "clips_per_s": n / t_tuned,
            "tokens_per_s": n * tokens_per_clip / t_tuned,
            "first_call_s": first_s,
            "compile": args.compile,
        },
        "speedup": t_base / t_tuned,
        "same_tokens": same_tokens,
        "same_bits": same_bits,
        "torch": torch.__version__,
    }
    print(
        f"MAGVIT-v2 {args.size} encoder ({res['encoder_params'] / 1e6:.2f}M params) on {res['device']}, "
        f"{n} clips of {args.frames}x{args.height}x{args.width} ({tokens_per_clip} tokens each), torch {torch.__version__}"
    )
    print(
        f"  eager fp32            {res['eager_fp32']['clips_per_s']:9.1f} clips/s {res['eager_fp32']['tokens_per_s']:12.0f} tokens/s"
    )
    label = "bf16+cl3d" + ("+compile" if args.compile else "")
    print(f"  {label:<21} {res['tuned']['clips_per_s']:9.1f} clips/s {res['tuned']['tokens_per_s']:12.0f} tokens/s"
          f"   (first call {first_s:.1f} s)")  # fmt: skip
    print(
        f"  speedup {res['speedup']:.2f}x (target >= 3x on a GPU); tokens identical to fp32: {same_tokens:.1%}, bits {same_bits:.2%}"
    )
    return res


if __name__ == "__main__":
    main()
