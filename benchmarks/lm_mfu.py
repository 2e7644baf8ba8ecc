"""Training throughput and MFU of the VideoPoet LM: DeepSpeed ZeRO against a plain-PyTorch loop, same run.

    python benchmarks/lm_mfu.py                                  # 300M, 1280 tokens, ZeRO-2, on one GPU
    python benchmarks/lm_mfu.py --size 1B --seq-len 4928 --micro-batch 1 --zero 3 --activation-checkpointing
    python benchmarks/lm_mfu.py --size 300M --seq-len 2560 --compile
    python benchmarks/lm_mfu.py --size 300M --seq-len 4096 --micro-batch 4 --grad-accum 4 --zero 1 --compile --ce-keep-logits
    DS_ACCELERATOR=cpu python benchmarks/lm_mfu.py --size debug --seq-len 256 --steps 3 --warmup 1   # CPU check

Both paths train the same model (same init, the full VideoPoet vocabulary unless --debug-vocab) on the same
synthetic text-to-video-shaped batches: `<bos> <task> <task:text_to_video> <bot_i>` + 64 text slots filled
with random caption embeddings + `<eot_i> <res> ... <bov_o>` as the bidirectional prefix, random visual
ids up to --seq-len as the causal, loss-bearing output. The loss is the model's chunked cross-entropy.
- deepspeed: `core.distributed.build_engine` with configs/ds/zero{N}.json, bf16 on GPU (fp32 master
  weights in the optimizer), torch AdamW (fused on CUDA), one process (its own one-rank process group);
- plain: fp32 parameters, `torch.autocast(bfloat16)` on GPU, torch AdamW (fused on CUDA), clip_grad_norm_.
Reported per path: tokens/s (all positions of the batch), MFU = flops_per_token(T) x tokens/s / peak, with
flops_per_token = 6 N + 12 L H Q T (N without the input embedding table; PaLM's count) against
--peak-flops (H100 dense bf16: 989e12), the peak GPU memory, and DeepSpeed / plain as a ratio.

Runs from the repository root without installing the package (the root is added to sys.path when
`import videopoet` fails); needs torch, numpy, einops, pyyaml, safetensors, fsspec and deepspeed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

try:
    import videopoet  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from videopoet.model.lm import LMConfig, VideoPoetLM  # noqa: E402
from videopoet.model.sequences import SequenceBuilder  # noqa: E402
from videopoet.model.vocab import Vocab  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_batches(vocab: Vocab, seq_len: int, batch: int, text_dim: int, n: int, device) -> list[dict]:
    """`n` distinct batches shaped like text-to-video sequences of exactly `seq_len` tokens."""
    b = SequenceBuilder(vocab)
    prompt = b.text_to_video((1, 1, 1)).prompt()  # the prefix: specials, 64 text slots, <res> ..., <bov_o>
    P = prompt.prefix_len
    if seq_len <= P + 1:
        raise SystemExit(f"--seq-len must exceed the {P}-token text-to-video prefix")
    g = torch.Generator().manual_seed(0)
    out = []
    lo, hi = vocab.visual_range
    for _ in range(n):
        tokens = torch.randint(lo, hi, (batch, seq_len), generator=g)
        tokens[:, :P] = prompt.tokens
        mask = torch.zeros(batch, seq_len, dtype=torch.bool)
        mask[:, P:] = True
        out.append(
            {
                "tokens": tokens.to(device),
                "loss_mask": mask.to(device),
                "text": torch.randn(batch, prompt.text_positions.numel(), text_dim, generator=g).to(device),
                "text_positions": prompt.text_positions.expand(batch, -1).contiguous().to(device),
                "prefix_len": torch.full((batch,), P, dtype=torch.long, device=device),
            }
        )
    return out


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(
    step_fn, batches, steps: int, warmup: int, device, sync_every: int
) -> tuple[float, list[float]]:
    """Seconds per step over `steps` timed steps after `warmup` untimed ones; also the losses.

    `step_fn` returns its loss as a device tensor; the losses are read on the host every `sync_every` steps
    (an optimizer step, as `jobs/trainer.py` does), not after every micro-batch."""
    losses: list = []

    def run(i: int, b: dict) -> None:
        losses.append(step_fn(b))
        if (i + 1) % sync_every == 0:
            float(losses[-1])  # waits for the device, as the trainer's per-step read does

    for i in range(warmup):
        run(i, batches[i % len(batches)])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        run(warmup + i, batches[(warmup + i) % len(batches)])
    _sync(device)
    return (time.perf_counter() - t0) / steps, [float(x) for x in losses]


def profile_steps(step_fn, batches, device, steps: int, what: str) -> str:
    """torch.profiler over `steps` more steps: the top kernels / ops by device time, as a table."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for i in range(steps):
            step_fn(batches[i % len(batches)])
        _sync(device)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
    return f"\n== profile: {what}, {steps} steps ==\n{table}"


def build_model(args, vocab: Vocab, device) -> VideoPoetLM:
    overrides = {"vocab_size": vocab.size, "max_seq_len": max(args.seq_len, 2)}
    if args.text_dim:
        overrides["text_dim"] = args.text_dim
    cfg = LMConfig.from_name(args.size, **overrides)
    torch.manual_seed(0)
    with torch.device(device):
        return VideoPoetLM(cfg)


def fused(args, device) -> bool:
    """torch's fused AdamW on CUDA for both paths (DeepSpeed's torch_adam passes `fused` through)."""
    return device.type == "cuda" and not args.no_fused_adam


def run_deepspeed(args, vocab, batches, device) -> dict:
    from videopoet.core import distributed as D

    D.init_distributed()
    model = build_model(args, vocab, device)
    flops = model.flops_per_token(args.seq_len)
    n_params = model.num_params()
    D.prepare_model(model, activation_checkpointing=args.activation_checkpointing, compile=args.compile)
    cuda = device.type == "cuda"
    ds = D.load_ds_config(
        os.path.join(REPO, "configs", "ds", f"zero{args.zero}.json"),
        {
            "train_micro_batch_size_per_gpu": args.micro_batch,
            "gradient_accumulation_steps": args.grad_accum,
            "train_batch_size": args.micro_batch * args.grad_accum,
            "bf16.enabled": cuda,
            "optimizer.params.lr": 1e-4,
            "zero_optimization.overlap_comm": cuda,
            "optimizer.params.fused": fused(args, device),  # DeepSpeed passes it on to torch.optim.AdamW
        },
    )
    engine = D.build_engine(
        model,
        ds,
        lr_lambda=lambda s: 1.0,
        weight_decay=0.1,
        chunk_size=args.ce_chunk,
        keep_logits=args.ce_keep_logits,
    )

    def step(b):
        loss, _, _ = engine(b["tokens"], b["loss_mask"], b["text"], b["text_positions"], b["prefix_len"])
        engine.backward(loss)
        engine.step()
        return loss.detach()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sec, losses = time_steps(step, batches, args.steps, args.warmup, device, args.grad_accum)
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    if args.profile:
        print(profile_steps(step, batches, device, args.profile, "deepspeed"), flush=True)
    return {
        "sec_per_step": sec,
        "losses": losses,
        "flops_per_token": flops,
        "params": n_params,
        "peak_mem_gib": mem,
    }


def run_plain(args, vocab, batches, device) -> dict:
    model = build_model(args, vocab, device)
    flops = model.flops_per_token(args.seq_len)
    model.gradient_checkpointing = args.activation_checkpointing
    if args.compile:
        for block in model.blocks:
            block.compile()
    cuda = device.type == "cuda"
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
        fused=fused(args, device),
    )

    micro = [0]

    def step(b):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = model.loss(
                b["tokens"],
                b["loss_mask"],
                text=b["text"],
                text_positions=b["text_positions"],
                prefix_len=b["prefix_len"],
                chunk_size=args.ce_chunk,
                keep_logits=args.ce_keep_logits,
            )
        (out.loss / args.grad_accum).backward()
        micro[0] += 1
        if micro[0] % args.grad_accum == 0:  # an optimizer step every grad_accum micro-batches, as DeepSpeed
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sec, losses = time_steps(step, batches, args.steps, args.warmup, device, args.grad_accum)
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    if args.profile:
        print(profile_steps(step, batches, device, args.profile, "plain"), flush=True)
    return {"sec_per_step": sec, "losses": losses, "flops_per_token": flops, "peak_mem_gib": mem}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="300M", help="LM size: debug, 300M, 1B, 8B")
    p.add_argument("--seq-len", type=int, default=1280, help="tokens per sequence (VideoPoet: 1280-5000)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per path first")
    p.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="micro-batches per optimizer step (both paths; a 'step' in the output is one micro-batch)",
    )
    p.add_argument("--zero", type=int, default=2, choices=(1, 2, 3))
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile each block (both paths)")
    p.add_argument("--ce-chunk", type=int, default=1024, help="tokens per chunk of the output-head CE")
    p.add_argument(
        "--ce-keep-logits",
        action="store_true",
        help="keep the head's logits for the backward instead of recomputing them (more memory, one matmul fewer)",
    )
    p.add_argument("--text-dim", type=int, default=None, help="caption embedding width (default: the size's)")
    p.add_argument("--debug-vocab", action="store_true", help="the 1,408-id debug vocabulary")
    p.add_argument("--peak-flops", type=float, default=989e12, help="per-device peak FLOP/s for MFU")
    p.add_argument("--skip-deepspeed", action="store_true", help="only the plain loop")
    p.add_argument("--skip-plain", action="store_true", help="only the DeepSpeed path (no same-run baseline)")
    p.add_argument("--no-fused-adam", action="store_true", help="foreach AdamW instead of fused (both paths)")
    p.add_argument("--profile", type=int, default=0, help="after timing, profile this many steps per path")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    vocab = Vocab.debug() if args.debug_vocab or args.size == "debug" else Vocab()
    text_dim = args.text_dim or LMConfig.from_name(args.size).text_dim
    batches = make_batches(vocab, args.seq_len, args.micro_batch, text_dim, 4, device)
    tokens = args.micro_batch * args.seq_len
    results = {
        "size": args.size,
        "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "grad_accum": args.grad_accum,
        "zero": args.zero,
        "vocab": vocab.size,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "activation_checkpointing": args.activation_checkpointing,
        "compile": args.compile,
        "fused_adam": fused(args, device),
        "ce_keep_logits": args.ce_keep_logits,
    }
    paths = {}
    if not args.skip_deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise SystemExit(
                "deepspeed is not importable here; install it (or pass --skip-deepspeed)"
            ) from None
        paths["deepspeed"] = run_deepspeed(args, vocab, batches, device)
        gc.collect()  # the engine and its optimizer state go before the plain model is built
        if cuda:
            torch.cuda.empty_cache()
    if not args.skip_plain:
        paths["plain"] = run_plain(args, vocab, batches, device)
    print(
        f"\nLM {args.size}, vocab {vocab.size}, {args.micro_batch} x {args.seq_len} tokens, {results['device']}"
    )
    print(f"{'path':<10} {'tokens/s':>12} {'MFU':>8} {'s/step':>9} {'peak GiB':>9}  first -> last loss")
    for name, r in paths.items():
        r["tokens_per_s"] = tokens / r["sec_per_step"]
        r["mfu"] = r["flops_per_token"] * r["tokens_per_s"] / args.peak_flops
        mem = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
        print(
            f"{name:<10} {r['tokens_per_s']:>12,.0f} {100 * r['mfu']:>7.2f}% {r['sec_per_step']:>9.4f} {mem:>9}  "
            f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"
        )
    if "deepspeed" in paths and "plain" in paths:
        ratio = paths["deepspeed"]["tokens_per_s"] / paths["plain"]["tokens_per_s"]
        results["deepspeed_over_plain"] = ratio
        print(f"deepspeed / plain throughput: {ratio:.3f}")
    results["paths"] = paths
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
