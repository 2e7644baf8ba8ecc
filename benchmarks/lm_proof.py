"""Proof that the LM trainer learns: train on real sample-corpus shards, regenerate training clips from their captions.

Three phases, so the GPU machine needs neither PyAV nor the text-encoder weights:

    # 1. here (CPU): sample corpus -> curate -> tokenize with the committed tokenizers, then pick the clips
    videopoet sample-data out/proof/raw
    videopoet curate out/proof/raw output=out/proof/curated clip.enabled=false
    videopoet tokenize out/proof/curated output=out/proof/tokens \\
        video.checkpoint=checkpoints/magvit2_small audio.checkpoint=checkpoints/soundstream_small
    python benchmarks/lm_proof.py prepare --tokens out/proof/tokens --out out/proof/set.npz
    # 2. GPU (device tool, carrying out/proof and the DeepSpeed wheels): train with DeepSpeed, then generate
    python benchmarks/lm_proof.py train --tokens out/proof/tokens --set out/proof/set.npz --run out/proof/lm \\
        --steps 1500 --out $OUT/generated.npz
    # 3. here (CPU): decode generations, PSNR against the source pixels, MP4s side by side
    python benchmarks/lm_proof.py score --set out/proof/set.npz --generated generated.npz --out out/proof/report

`prepare` picks the captioned video windows of the shards (one per distinct caption, at most --clips), stores their
sample ids, captions, the caption embeddings the tokenize job wrote (the configured text encoder's output
for exactly that caption), their token grids and the source pixels of each window (decoded with the
tokenize job's own resize/crop rule). `train` runs `jobs/train_lm.py` (DeepSpeed ZeRO-2, bf16, one GPU) on
the text-to-video task of the whole shard set, then samples each chosen clip's tokens from its caption
embedding alone (KV cache, all captions in one batch; greedy, and top-k with classifier-free guidance), with
the run's export. `score` decodes the generated grids
with the MAGVIT-v2 the shards were made with and reports PSNR against the original window, next to the
tokenizer's own reconstruction PSNR (the ceiling a perfect LM reaches) and the PSNR of a different
training clip's reconstruction (what an LM that ignored the caption would score).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

try:
    import videopoet  # noqa: F401
except ImportError:  # from a checkout without `pip install -e .`: the repo root is the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def read_window(uri: str, start_s: float, frames: int, fps: float, width: int, height: int) -> np.ndarray:
    """The window's source pixels, resized to cover (width, height) and centre-cropped like the tokenize job."""
    import av

    from videopoet.pipelines.media import seek_video_frames, video_stream
    from videopoet.pipelines.tokenize_stages import cover_size, crop_center

    with av.open(uri, metadata_errors="ignore") as c:
        s = video_stream(c)
        w0, h0 = s.codec_context.width, s.codec_context.height
    cw, ch = cover_size(w0, h0, width, height)
    got = seek_video_frames(uri, [start_s + i / fps for i in range(frames)], width=cw, height=ch, fmt="rgb24")
    if len(got) < frames:
        raise SystemExit(f"{uri} gave {len(got)} of {frames} frames from {start_s:.2f} s")
    return np.stack([crop_center(f, width, height) for f in got])


def prepare(args) -> None:
    from videopoet.pipelines.shards import ShardReader

    by_caption: dict[str, list[dict]] = {}
    for row in ShardReader(args.tokens, shuffle=False, loop=False):
        if (
            row["modality"] != "video"
            or not row.get("caption")
            or (row["width"], row["height"]) != (128, 128)
        ):
            continue
        by_caption.setdefault(row["caption"], []).append(row)
    if not by_caption:
        raise SystemExit(f"no captioned 128x128 video windows in {args.tokens}")
    captions = sorted(by_caption)[: args.clips]
    # A caption may name several training windows (scenes and windows of one captioned file): the LM may
    # regenerate any of them, so all are kept as references; the prompt uses the first one's embedding.
    refs = [
        (k, r) for k, c in enumerate(captions) for r in sorted(by_caption[c], key=lambda r: r["sample_id"])
    ]
    first = [by_caption[c][0] for c in captions]
    width = max(r["text_embedding"].shape[0] for r in first)
    text = np.zeros((len(first), width, first[0]["text_embedding"].shape[1]), np.float16)
    for i, r in enumerate(first):
        text[i, : r["text_embedding"].shape[0]] = r["text_embedding"]
    pixels = [
        read_window(r["uri"], r["start_s"], r["num_frames"], r["fps"], r["width"], r["height"])
        for _, r in refs
    ]
    np.savez_compressed(
        args.out,
        caption=np.array(captions),
        text=text,
        text_length=np.array([r["text_embedding"].shape[0] for r in first]),
        shape=np.array(first[0]["video_tokens"].shape),
        fps=np.array([r["fps"] for r in first]),
        ref_caption=np.array([k for k, _ in refs]),
        ref_sample_id=np.array([r["sample_id"] for _, r in refs]),
        ref_tokens=np.stack([r["video_tokens"] for _, r in refs]),
        ref_pixels=np.stack(pixels),
    )
    for c in captions:
        names = sorted({os.path.basename(r["uri"]) for r in by_caption[c]})
        print(f"{c!r}: {len(by_caption[c])} training windows ({', '.join(names)})")
    print(f"wrote {args.out}: {len(captions)} captions, {len(refs)} reference windows")


def train(args) -> None:
    import torch

    from videopoet.core.config import load_config
    from videopoet.jobs import train_lm
    from videopoet.jobs.generate import TASKS, Generator
    from videopoet.jobs.generate import Config as GenConfig
    from videopoet.model.generate import SamplingConfig, generate

    overrides = [
        f"data.url={args.tokens}",
        f"output={args.run}",
        "data.tasks={" + ", ".join(f"{t}: {1.0 if t == 'text_to_video' else 0.0}" for t in TASKS) + "}",
        "data.image_phase=0.0",
        "data.image_share_late=0.0",
        "data.text_dropout=0.1",
        f"model.size={args.size}",
        f"model.overrides=[{','.join(args.model_overrides)}]"
        if args.model_overrides
        else "model.overrides=[]",
        f"train.max_steps={args.steps}",
        f"train.micro_batch={args.micro_batch}",
        f"train.lr={args.lr}",
        "train.warmup_steps=50",
        "train.weight_decay=0.0",
        "train.activation_checkpointing=false",
        "checkpoint.every=100000",
        f"log.every={max(1, args.steps // 30)}",
    ]
    cfg = load_config(train_lm.Config, os.path.join(REPO, "configs/train_lm.yaml"), overrides)
    t0 = time.time()
    train_lm.main(cfg)
    train_s = time.time() - t0
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()

    s = np.load(args.set)
    out = {"caption": s["caption"], "train_s": train_s, "steps": args.steps}
    with open(os.path.join(args.run, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    out["loss_curve"] = np.array(
        [[m.get("step", 0), m.get("loss", float("nan"))] for m in metrics], np.float64
    )
    gcfg = load_config(
        GenConfig, os.path.join(REPO, "configs/generate.yaml"), [f"checkpoint={args.run}", "seed=0"]
    )
    g = Generator(gcfg)
    shape = tuple(int(x) for x in s["shape"])
    prompt = g.builder.text_to_video(shape).prompt()
    B, P = len(s["caption"]), prompt.prefix_len
    lengths = [min(int(n), g.builder.text_slots) for n in s["text_length"]]
    S = max(lengths)
    text = torch.from_numpy(s["text"][:, :S].astype(np.float32)).to(g.device)
    pos = prompt.text_positions[:S].repeat(B, 1)
    for i, n in enumerate(lengths):
        pos[i, n:] = -1  # slots past a caption's length keep the <text> embedding, as in training
    for name, sampling in {
        "greedy": SamplingConfig(temperature=0.0),
        "cfg": SamplingConfig(temperature=1.0, top_k=args.top_k, guidance_scale=args.guidance),
    }.items():
        t0 = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=g.device.type == "cuda"):
            res = generate(
                g.lm,
                prompt.tokens[:P].repeat(B, 1).to(g.device),
                prompt.plan,
                text=text,
                text_positions=pos.to(g.device),
                sampling=sampling,
                generator=torch.Generator(device=g.device).manual_seed(0),
            )
        ids, i = [], 0
        for step in prompt.plan:
            if not step.forced:
                ids.append(res.tokens[:, i : i + len(step)])
            i += len(step)
        grids = g.vocab.ids_to_visual(torch.cat(ids, 1).cpu()).reshape(B, *shape).numpy()
        out[f"gen_{name}"] = grids
        np.savez_compressed(args.out, **out)  # after each mode: a cut-off run keeps what it made
        print(f"{name}: {B} videos in {time.time() - t0:.0f} s")
    print(f"trained {args.steps} steps in {train_s:.0f} s; wrote {args.out}")


def score(args) -> None:
    import torch

    from videopoet.jobs.generate import _pixels_to_rgb, write_mp4
    from videopoet.tokenizers.magvit2 import MagvitV2

    s, g = np.load(args.set), np.load(args.generated)
    assert list(s["caption"]) == list(g["caption"]), "generated.npz is for another caption set"
    magvit = MagvitV2.from_pretrained(args.magvit)
    os.makedirs(args.out, exist_ok=True)

    def decode(grid: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _pixels_to_rgb(magvit.decode(torch.from_numpy(grid.astype(np.int64))[None]))

    ref_caption, ref_pixels = s["ref_caption"], s["ref_pixels"]
    rows, names = [], [k for k in g.files if k.startswith("gen_")]
    for k, caption in enumerate(s["caption"]):
        own = np.flatnonzero(ref_caption == k)
        row = {"caption": str(caption), "training_windows": int(len(own))}
        sheet = []
        for name in names:
            gen = decode(g[name][k])
            scores = np.array([psnr(gen, ref_pixels[j]) for j in range(len(ref_pixels))])
            best = int(own[np.argmax(scores[own])])
            others = np.flatnonzero(ref_caption != k)
            row[f"{name[4:]}_psnr"] = float(scores[best])  # against the source pixels of its closest window
            row[f"{name[4:]}_matched_window"] = str(s["ref_sample_id"][best])
            row[f"{name[4:]}_token_agreement"] = float(np.mean(g[name][k] == s["ref_tokens"][best]))
            row[f"{name[4:]}_best_other_caption_psnr"] = float(scores[others].max()) if len(others) else None
            if name == names[0]:
                recon = decode(s["ref_tokens"][best])
                row["tokenizer_psnr"] = psnr(recon, ref_pixels[best])  # the ceiling: a perfect LM's score
                sheet += [ref_pixels[best], recon]
            sheet.append(gen)
        write_mp4(os.path.join(args.out, f"{k:02d}.mp4"), np.concatenate(sheet, axis=2), float(s["fps"][k]))
        rows.append(row)
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    summary = {
        "steps": int(g["steps"]),
        "train_s": float(g["train_s"]),
        "final_loss": float(g["loss_curve"][-1, 1]) if len(g["loss_curve"]) else None,
        "clips": rows,
        "mean": {k: float(np.mean([r[k] for r in rows if r[k] is not None])) for k in keys},
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    for r in rows:
        print(json.dumps(r))
    print(json.dumps(summary["mean"], indent=1))
    print(f"MP4s (original | tokenizer reconstruction | {' | '.join(n[4:] for n in names)}) in {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="phase", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--tokens", required=True)
    a.add_argument("--out", required=True)
    a.add_argument("--clips", type=int, default=8)
    b = sub.add_parser("train")
    b.add_argument("--tokens", required=True)
    b.add_argument("--set", required=True)
    b.add_argument("--run", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--steps", type=int, default=1500)
    b.add_argument("--micro-batch", type=int, default=8)
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--size", default="debug")
    b.add_argument(
        "--model-overrides",
        nargs="*",
        default=["n_layer=8", "n_head=8", "d_model=512", "ffn_dim=1408", "max_seq_len=2048"],
    )
    b.add_argument("--top-k", type=int, default=20)
    b.add_argument("--guidance", type=float, default=3.0)
    c = sub.add_parser("score")
    c.add_argument("--set", required=True)
    c.add_argument("--generated", required=True)
    c.add_argument("--magvit", default=os.path.join(REPO, "checkpoints/magvit2_small"))
    c.add_argument("--out", required=True)
    args = p.parse_args()
    {"prepare": prepare, "train": train, "score": score}[args.phase](args)


if __name__ == "__main__":
    main()
