"""CLIP scoring throughput: ClipScoreStage's full data path vs the bare model forward, same run, same batch.

The baseline is `model.encode_image` on a tensor already on the device (what the GPU can do); the stage
number is `process_rows` on rows holding uint8 frames (stacking, host->device copy, normalization,
forward, per-clip mean, list conversion). The ratio stage/bare is the data path's efficiency (target >= 0.8).

    python benchmarks/clip_throughput.py                              # ViT-B-32, random weights, auto device
    python benchmarks/clip_throughput.py --device cpu --batch-size 8 --iters 2
    python benchmarks/clip_throughput.py --weights /models/open_clip_pytorch_model.bin --batch-size 512

Without --weights the model's random init is saved to a temporary checkpoint and loaded through the normal
`clip.weights` path: fine for speed, meaningless for scores (the stage itself never runs unweighted).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

try:
    import videopoet  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`: the repo root is the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from videopoet.pipelines.clip import ClipConfig, ClipScoreStage


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn, device, iters: int, warmup: int) -> float:
    """Median seconds per call."""
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
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    p.add_argument("--weights", default=None, help="checkpoint path/URL or pretrained tag (default: random)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--num-frames", type=int, default=8, help="frames per clip row")
    p.add_argument(
        "--passes", type=int, default=4, help="forward passes per stage call (clip.passes_per_call)"
    )
    p.add_argument("--frame-size", type=int, default=224, help="H = W of the frames in the rows")
    p.add_argument(
        "--captions",
        action="store_true",
        help="give every row its own caption (adds tokenizing + encode_text; caption cache cleared each call)",
    )
    p.add_argument("--cprofile", action="store_true", help="also print a cProfile of the stage calls")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    assert args.batch_size % args.num_frames == 0, (
        f"--batch-size {args.batch_size} must be a multiple of --num-frames {args.num_frames}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            import open_clip

            torch.manual_seed(0)
            weights = os.path.join(tmp, f"{args.model}-random-init.bin")
            torch.save(open_clip.create_model(args.model).state_dict(), weights)
        cfg = ClipConfig(
            model=args.model,
            weights=weights,
            device=args.device,
            batch_size=args.batch_size,
            num_frames=args.num_frames,
            passes_per_call=args.passes,
            cache_dir=os.path.join(tmp, "cache"),
        )
        stage = ClipScoreStage(cfg)
        stage.setup()

    device = stage.device
    n_rows = stage.batch_size  # rows per stage call: passes * batch_size / num_frames
    n_images = n_rows * args.num_frames
    rng = np.random.default_rng(0)
    rows = [
        {
            "clip_id": f"clip{i}",
            "status": "ok",
            "caption": f"a person walking dog number {i} on a beach at sunset" if args.captions else None,
            "frames": rng.integers(0, 256, (args.num_frames, args.frame_size, args.frame_size, 3), np.uint8),
        }
        for i in range(n_rows)
    ]
    h, w = stage.image_size
    x = torch.randn(args.batch_size, 3, h, w, device=device).to(stage.dtype)  # the dtype the stage feeds

    def bare():
        with torch.inference_mode():
            stage.model.encode_image(x)

    def full():
        stage._text_cache.clear()  # worst case: no two clips share a caption, none seen before
        out = stage.process_rows(rows)
        assert len(out) == n_rows and "clip_embedding" in out[0]

    if device.type == "cuda":  # where the stage's host time goes: one pass's copy into pinned memory and DMA
        jobs, lo = [], 0
        for r in rows[: args.batch_size // args.num_frames]:
            jobs.append((lo, lo + args.num_frames, r["frames"]))
            lo += args.num_frames
        shape = (args.batch_size, args.frame_size, args.frame_size, 3)
        import threading

        ready = [(threading.Event(), None)] * 4
        for e, _ in ready:
            e.set()
        t_fill = _timeit(lambda: stage._fill(2, shape, jobs, ready), torch.device("cpu"), args.iters, 1)
        buf = stage._fill(0, shape, jobs, ready)
        dev_buf = torch.empty_like(buf, device=device)
        t_dma = _timeit(lambda: dev_buf.copy_(buf, non_blocking=True), device, args.iters, 1)
        t_prep = _timeit(lambda: stage._to_model_input(dev_buf), device, args.iters, 1)
        print(
            f"per pass of {args.batch_size} images: fill {t_fill * 1e3:.2f} ms, "
            f"host->device {t_dma * 1e3:.2f} ms, normalize {t_prep * 1e3:.2f} ms"
        )

    # alternate the two so clock/thermal drift and other tenants hit both alike; keep each one's best round
    t_bare, t_full = [], []
    for _ in range(2):
        t_bare.append(_timeit(bare, device, args.iters, args.warmup))
        t_full.append(_timeit(full, device, args.iters, args.warmup))
    if args.cprofile:  # where the stage's host time goes, by Python function
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.iters):
            full()
        _sync(device)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    bare_ips = args.batch_size / min(t_bare)
    full_ips = n_images / min(t_full)

    what = (
        f"weights {args.weights}"
        if args.weights
        else "RANDOM weights (benchmark only: speed is real, scores are meaningless)"
    )
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    print(f"model {args.model}, {what}")
    print(f"device {name}, weights {str(stage.dtype).removeprefix('torch.')}, torch {torch.__version__}")
    print(
        f"forward batch {args.batch_size} images (both); stage call = {n_rows} rows x {args.num_frames} frames "
        f"of {args.frame_size}x{args.frame_size} = {args.passes} passes; captions "
        f"{'on' if args.captions else 'off'}; median of {args.iters} iters, best of 2 rounds"
    )
    print(
        f"bare encode_image   : {bare_ips:10.1f} images/s ({args.batch_size / bare_ips * 1e3:.2f} ms a pass)"
    )
    print(f"ClipScoreStage path : {full_ips:10.1f} images/s")
    ratio = full_ips / bare_ips
    print(f"ratio stage/bare    : {ratio:10.3f}  (target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'})")
    return {"bare_ips": bare_ips, "stage_ips": full_ips, "ratio": ratio}


if __name__ == "__main__":
    main()
