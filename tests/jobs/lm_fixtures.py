"""Tiny token-shard datasets and LM / SR runs for the train-lm / train-sr / generate tests.

Rows carry captions from tests/assets embedded with the bundled MiniLM text encoder (the debug LM's 384-d
text width), video tokens of a 9 x 32 x 32 clip at the debug MAGVIT-v2 (3 x 4 x 4 latent grid, 2^10 codes)
and audio tokens of its 1.125 s at the debug vocabulary (2 RVQ levels x 64 codes, 56 frames). The token
grids follow simple spatial/temporal patterns, so a few optimizer steps visibly lower the loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / "tests" / "assets"
VIDEO_SHAPE = (3, 4, 4)
AUDIO_SHAPE = (2, 56)
VOCAB = {"visual_bits": 10, "audio_levels": 2, "audio_codebook_size": 64}


def captions() -> list[str]:
    caps = [p.read_text().strip().splitlines()[0] for p in sorted(ASSETS.glob("image_*.txt"))]
    return caps + [
        "A white cockatoo turns its head on a perch.",
        "Traffic moves through a city street at dusk.",
        "A rocket lifts off from its launch pad in a cloud of smoke.",
    ]


def embed_captions(texts: list[str]):
    """(embeddings list of (len, 384) float16 arrays, encoder id) from the bundled MiniLM."""
    from videopoet.tokenizers.text import TextEncoderConfig, build_text_encoder

    enc = build_text_encoder(TextEncoderConfig(kind="minilm"))
    out = enc.encode(texts)
    embs = [out.embeddings[i, : int(out.mask[i].sum())].numpy().astype(np.float16) for i in range(len(texts))]
    return embs, enc.id


def sr_tokens(video: np.ndarray) -> np.ndarray:
    """A super-resolution target for low-resolution codes (T', H', W'): each code becomes a 2 x 2 block of codes
    that follow from it and the position inside the block (so an SR stage can learn the mapping)."""
    up = np.repeat(np.repeat(video, 2, axis=1), 2, axis=2).astype(np.int64)
    phase = (np.arange(up.shape[1])[:, None] % 2) * 2 + np.arange(up.shape[2])[None, :] % 2
    return ((up * 4 + phase) % 1024).astype(np.int32)


def make_rows(
    n_av: int, n_video: int, n_image: int, embs: list[np.ndarray], seed: int = 0, sr: bool = False
) -> list[dict]:
    """Shard rows: video windows with audio and a caption (`n_av`), video windows without either (`n_video`),
    captioned images (`n_image`), and one audio-only row (which no LM task uses). With `sr`, video and image
    rows also carry a 2x super-resolution target (`sr_tokens`)."""
    rng = np.random.default_rng(seed)
    rows = []
    t, h, w = VIDEO_SHAPE
    grid = np.arange(t)[:, None, None] * 7 + np.arange(h)[None, :, None] * 3 + np.arange(w)[None, None, :]
    total = n_av + n_video + n_image
    for i in range(total + 1):
        base = int(rng.integers(0, 1024))
        kind = "av" if i < n_av else "video" if i < n_av + n_video else "image" if i < total else "audio"
        video = ((base + grid * (1 + i % 3)) % 1024).astype(np.int32)
        if kind == "image":
            video = video[:1]
        audio = None
        if kind in ("av", "audio"):
            frames = np.arange(AUDIO_SHAPE[1])
            audio = np.stack([(base + frames * (lv + 1)) % 64 for lv in range(AUDIO_SHAPE[0])]).astype(
                np.int32
            )
        emb = None if kind in ("video", "audio") else embs[i % len(embs)]
        rows.append(
            {
                "sample_id": f"{kind}-{i:03d}-w0000",
                "clip_id": f"{kind}-{i:03d}",
                "window_index": 0,
                "uri": f"memory://{kind}-{i:03d}.mp4",
                "modality": "audio" if kind == "audio" else "image" if kind == "image" else "video",
                "caption": None if emb is None else f"caption {i % len(embs)}",
                "fps": None if kind in ("image", "audio") else 8.0,
                "num_frames": {"image": 1, "audio": 0}.get(kind, 9),
                "video_tokens": None if kind == "audio" else video,
                "video_shape": None if kind == "audio" else list(video.shape),
                "audio_tokens": audio,
                "audio_shape": None if audio is None else list(audio.shape),
                "text_embedding": emb,
                "text_length": None if emb is None else emb.shape[0],
                "text_dim": None if emb is None else emb.shape[1],
                "num_tokens": (0 if kind == "audio" else video.size) + (0 if audio is None else audio.size),
                "sr_video_tokens": sr_tokens(video) if sr and kind != "audio" else None,
            }
        )
    return rows


def save_debug_tokenizers(root: Path) -> tuple[str, str]:
    """Tiny MAGVIT-v2 (debug size, 2^10 codes) and SoundStream (2 levels x 64 codes) checkpoints under `root`."""
    import torch

    from videopoet.tokenizers.magvit2 import MagvitConfig, MagvitV2
    from videopoet.tokenizers.soundstream import SoundStream, SoundStreamConfig

    torch.manual_seed(0)
    video, audio = root / "magvit2", root / "soundstream"
    MagvitV2(MagvitConfig.from_name("debug")).save_pretrained(str(video))
    cfg = SoundStreamConfig.from_name(
        "debug", num_levels=VOCAB["audio_levels"], codebook_size=VOCAB["audio_codebook_size"]
    )
    SoundStream(cfg).save_pretrained(str(audio))
    return str(video), str(audio)


def shard_meta(video_ckpt: str, audio_ckpt: str, text_encoder: str, visual_bits: int | None = None) -> dict:
    """Dataset metadata as `videopoet tokenize` records it (pipelines/tokenize_stages.checkpoint_info)."""
    from videopoet.model.vocab import Vocab
    from videopoet.pipelines.tokenize_stages import checkpoint_info

    video = checkpoint_info(video_ckpt, "magvit2", "video.checkpoint")
    audio = checkpoint_info(audio_ckpt, "soundstream", "audio.checkpoint")
    bits = visual_bits or video["codebook_bits"]
    vocab = Vocab(
        visual_bits=bits, audio_levels=audio["num_levels"], audio_codebook_size=audio["codebook_size"]
    )
    return {
        "schema_version": 1,
        "video_tokenizer": {**video, "codebook_bits": bits, "vocab_size": 2**bits},
        "audio_tokenizer": audio,
        "text_encoder": {"id": text_encoder, "dim": 384, "max_tokens": 64},
        "vocab": vocab.metadata(),
        "window": {
            "frames": 9,
            "fps": 8.0,
            "seconds": 1.125,
            "sizes": [[32, 32]],
            "latent_frames": VIDEO_SHAPE[0],
            "audio_samples": 18000,
            "audio_frames": AUDIO_SHAPE[1],
            "audio_rate": 16000,
        },
        "sr": None,
        "precision": "float32",
    }


def write_dataset(
    out: Path,
    rows: list[dict],
    meta: dict,
    *,
    rows_per_group: int = 4,
    rows_per_shard: int = 16,
    shard_metas: dict[int, dict] | None = None,
) -> Path:
    """A token dataset (manifest.json + shards/part-NNNNN.parquet) written with pipelines/shards.py.

    `shard_metas[i]` replaces the metadata of shard i only (a shard tokenized differently from the rest).
    """
    from videopoet.pipelines.shards import write_manifest, write_shard

    infos = []
    for si, start in enumerate(range(0, len(rows), rows_per_shard)):
        name = f"shards/part-{si:05d}.parquet"
        m = (shard_metas or {}).get(si, meta)
        info = write_shard(str(out / name), rows[start : start + rows_per_shard], m, rows_per_group)
        infos.append({"name": name, **info})
    write_manifest(str(out), infos, meta)
    return out


@dataclass
class Dataset:
    url: str
    meta: dict
    rows: list[dict]
    video_tokenizer: str
    audio_tokenizer: str


def make_dataset(
    root: Path, n_av: int = 24, n_video: int = 8, n_image: int = 16, sr: bool = False
) -> Dataset:
    """Debug tokenizers + a token dataset made with them (captions embedded by the bundled MiniLM); with `sr`,
    2x super-resolution pairs too."""
    video, audio = save_debug_tokenizers(root / "tokenizers")
    embs, enc_id = embed_captions(captions())
    meta = shard_meta(video, audio, enc_id)
    if sr:
        meta["sr"] = {"scale": 2, "max_upscale": 1.0}
    rows = make_rows(n_av, n_video, n_image, embs, sr=sr)
    url = write_dataset(root / "tokens", rows, meta)
    return Dataset(url=str(url), meta=meta, rows=rows, video_tokenizer=video, audio_tokenizer=audio)


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    e.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return e


def train(
    args: list[str], nproc: int = 1, timeout: float = 300, job: str = "train_lm"
) -> subprocess.CompletedProcess:
    """Run jobs/<job>.py (under torchrun for nproc > 1) with configs/<job>_debug.yaml + `args`."""
    script = [
        str(REPO_ROOT / "jobs" / f"{job}.py"),
        "--config",
        str(REPO_ROOT / "configs" / f"{job}_debug.yaml"),
    ]
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_port",
            str(_free_port()),
            *script,
            *args,
        ]
    else:
        cmd = [sys.executable, *script, *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir: Path) -> dict[int, tuple[str, float]]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = (rec["task"], rec["loss"])
    return out
