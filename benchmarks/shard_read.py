"""Token-shard read speed against what the LM trainer consumes, both measured in this run on this machine.

    uv run python benchmarks/shard_read.py                       # 4096 rows, debug-size LM
    uv run python benchmarks/shard_read.py --rows 16384 --lm-batch 16 --lm-seq 512

Writes a dataset of debug-size samples with `pipelines/shards.py` (video 5x16x16 MAGVIT-v2 tokens, audio
4x106 SoundStream codes, ~12 x 384 float16 caption embeddings; a quarter images, some SR targets) into a
temporary folder, then times:
- reader: one `ShardReader` process iterating every row (shuffled row groups and rows, all columns,
  token arrays reshaped), in tokens (video + audio) per second;
- LM: forward + loss + backward of the `debug` VideoPoet LM (model/lm.py) on random batches of its
  vocabulary, in tokens per second, with every core of this process.
The ratio reader / LM says how many trainer processes one reader process keeps fed (target >= 10x).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def build_dataset(root: Path, rows: int, shards: int, row_group_size: int) -> str:
    from videopoet.model.vocab import Vocab
    from videopoet.pipelines.shards import sample_id, write_manifest, write_shard

    meta = {
        "schema_version": 1,
        "video_tokenizer": {
            "id": "magvit2:bench",
            "sha256": "0" * 64,
            "codebook_bits": 10,
            "vocab_size": 1024,
        },
        "audio_tokenizer": {
            "id": "soundstream:bench",
            "sha256": "1" * 64,
            "num_levels": 4,
            "codebook_size": 256,
        },
        "text_encoder": {"id": "minilm:bench", "dim": 384, "max_tokens": 64},
        "vocab": Vocab(visual_bits=10, audio_levels=4, audio_codebook_size=256).metadata(),
        "window": {"frames": 17, "fps": 8.0, "latent_frames": 5, "audio_frames": 106},
    }
    rng = np.random.default_rng(0)
    infos = []
    per = rows // shards
    for s in range(shards):
        out = []
        for i in range(per):
            clip = f"{s:04d}{i:06d}" + "b" * 30
            image = i % 4 == 3
            r = {
                "sample_id": sample_id(clip, 0),
                "clip_id": clip,
                "window_index": 0,
                "uri": f"s3://bucket/media/{clip}.mp4",
                "modality": "image" if image else "video",
                "caption": f"a caption of sample {i} with a few more words in it",
                "video_tokens": rng.integers(0, 1024, (1 if image else 5, 16, 16), dtype=np.int32),
                "text_embedding": rng.standard_normal((12, 384)).astype(np.float16),
                "width": 128,
                "height": 128,
            }
            if not image:
                r["audio_tokens"] = rng.integers(0, 256, (4, 106), dtype=np.int32)
                r.update(start_s=0.0, end_s=2.125, fps=8.0, num_frames=17)
            if i % 8 == 0 and not image:
                r["sr_video_tokens"] = rng.integers(0, 1024, (5, 32, 32), dtype=np.int32)
            r["num_tokens"] = r["video_tokens"].size + (r["audio_tokens"].size if "audio_tokens" in r else 0)
            out.append(r)
        out.sort(key=lambda r: r["sample_id"])
        name = f"shards/part-{s:05d}.parquet"
        infos.append({"name": name, **write_shard(str(root / name), out, meta, row_group_size)})
    write_manifest(str(root), infos, meta)
    return str(root)


def time_reader(url: str, columns: list[str] | None) -> tuple[float, int, int]:
    from videopoet.pipelines.shards import ShardReader

    reader = ShardReader(url, seed=0, shuffle=True, loop=False, columns=columns)
    t0 = time.perf_counter()
    rows = tokens = 0
    for row in reader:
        rows += 1
        for k in ("video_tokens", "audio_tokens"):
            a = row.get(k)
            if a is not None:
                tokens += a.size
    return time.perf_counter() - t0, rows, tokens


def time_lm(batch: int, seq: int, steps: int) -> float:
    """Tokens per second of forward + loss + backward of the debug LM."""
    import torch

    from videopoet.model.lm import LMConfig, VideoPoetLM

    torch.manual_seed(0)
    cfg = LMConfig.from_name("debug")
    seq = min(seq, cfg.max_seq_len)
    model = VideoPoetLM(cfg)
    idx = torch.randint(256, cfg.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[:, : seq // 8] = False  # a prefix without loss, as in the task sequences
    for _ in range(2):  # warm-up
        model.loss(idx, mask, prefix_len=seq // 8).loss.backward()
    t0 = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        model.loss(idx, mask, prefix_len=seq // 8).loss.backward()
    return batch * seq * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--row-group-size", type=int, default=256)
    ap.add_argument("--lm-batch", type=int, default=8)
    ap.add_argument("--lm-seq", type=int, default=512)
    ap.add_argument("--lm-steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2, help="reader passes; the best is kept")
    args = ap.parse_args()
    import os

    import torch

    with tempfile.TemporaryDirectory(prefix="videopoet-shard-bench-") as tmp:
        t0 = time.perf_counter()
        url = build_dataset(Path(tmp), args.rows, args.shards, args.row_group_size)
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.parquet"))
        print(
            f"dataset: {args.rows} rows in {args.shards} shards, {size / 2**20:.1f} MiB (written in {time.perf_counter() - t0:.1f}s)"
        )
        best = min(time_reader(url, None) for _ in range(args.repeat))
        secs, rows, tokens = best
        reader_tps = tokens / secs
        print(
            f"reader, all columns:      {rows / secs:10.0f} rows/s  {reader_tps:12.0f} tokens/s  (one process)"
        )
        secs2, _, tokens2 = min(
            time_reader(url, ["video_tokens", "audio_tokens", "text_embedding"]) for _ in range(args.repeat)
        )
        print(f"reader, training columns: {rows / secs2:10.0f} rows/s  {tokens2 / secs2:12.0f} tokens/s")
    lm_tps = time_lm(args.lm_batch, args.lm_seq, args.lm_steps)
    print(
        f"LM debug forward+backward: {lm_tps:12.0f} tokens/s  (batch {args.lm_batch} x {args.lm_seq}, "
        f"{torch.get_num_threads()} threads of {os.cpu_count()} cores)"
    )
    ratio = reader_tps / lm_tps
    print(f"ratio reader / LM: {ratio:.1f}x  (target >= 10x) -> {'OK' if ratio >= 10 else 'BELOW TARGET'}")


if __name__ == "__main__":
    main()
