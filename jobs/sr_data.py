"""Training data of a super-resolution stage: the SR pairs of the token shards -> masked, noised micro-batches.

    data = SRData(cfg.data, scale=2, visual_bits=18, text_dim=2048, seed=0, micro_batch=4, grad_accum=1)
    data.check_compatible(expected)          # before training: refuses bad or mismatched shards
    for mb in data.micro_batches(step):      # grad_accum micro-batches of this rank for optimizer step `step`
        mb.hr, mb.mask, mb.lr, mb.text, mb.text_mask, mb.lr_keep, mb.text_keep
    state = data.state_dict()                # exact resume with load_state_dict

Rows: a shard row is an SR pair when its `sr_video_tokens` (T', s H', s W') go with its `video_tokens`
(T', H', W') at the model's scale s (videos and images alike: the tokenize job writes both at `sr.scale`
times the window size when the source is large enough). Other rows are read and skipped
(`skipped_rows`). A micro-batch holds pairs of one grid (no padding); reading goes through the LM's reader
streams (`lm_data.ShardStreams`: partitions split across ranks, per-grid buffers, exact resume; a fixed
`data.streams` makes the sample order independent of the number of ranks).

Per sample, from an RNG seeded with (seed, step, stream, micro-batch), so resumed runs draw the same:
- mask (masked token modeling): a fraction cos(pi/2 u), u ~ U[0, 1), of the N HR positions - at least one -
  is masked at random (MaskGIT's cosine schedule, `model.sr.mask_ratio`); the loss is on those;
- noise augmentation: a fraction ~ U[0, `lr_noise_max`] of the LR codes is resampled uniformly from the
  2^K codes, so the stage learns to use LR tokens that are not exactly the tokenizer's (at generation
  they come from the LM);
- condition dropout (classifier-free guidance): the LR condition and the caption are each dropped with
  probability `lr_dropout` / `text_dropout` (0.1), independently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from videopoet.core.config import check
from videopoet.core.errors import UserError
from videopoet.jobs.lm_data import RowPolicy, ShardStreams, StreamConfig
from videopoet.model.sequences import MAX_TEXT_TOKENS
from videopoet.model.sr import mask_ratio

TASK = "super_resolution"


@dataclass(kw_only=True)
class SRDataConfig(StreamConfig):
    """Where the token shards are and how SR pairs become training samples."""

    text_slots: int = 64
    """Caption embeddings kept per sample (<= 64); longer captions are truncated."""
    lr_dropout: float = 0.1
    """Probability that a sample's LR condition is dropped (classifier-free guidance)."""
    text_dropout: float = 0.1
    """Probability that a sample's caption is dropped (classifier-free guidance), independently of the LR one."""
    lr_noise_max: float = 0.2
    """Noise augmentation: each sample resamples a fraction ~ U[0, lr_noise_max] of its LR codes uniformly."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            1 <= self.text_slots <= MAX_TEXT_TOKENS, "text_slots", self.text_slots, f"in 1..{MAX_TEXT_TOKENS}"
        )
        check(0 <= self.lr_dropout <= 1, "lr_dropout", self.lr_dropout, "in [0, 1]")
        check(0 <= self.text_dropout <= 1, "text_dropout", self.text_dropout, "in [0, 1]")
        check(0 <= self.lr_noise_max <= 1, "lr_noise_max", self.lr_noise_max, "in [0, 1]")


@dataclass(frozen=True)
class PairKey:
    """The grids of an SR pair: rows with one key batch without padding (None: the row holds no pair)."""

    lr: tuple[int, int, int]
    hr: tuple[int, int, int]

    @classmethod
    def of(cls, row: dict) -> PairKey | None:
        lo, hi = row.get("video_tokens"), row.get("sr_video_tokens")
        if lo is None or hi is None or np.ndim(lo) != 3 or np.ndim(hi) != 3:
            return None
        return cls(lr=tuple(int(s) for s in np.shape(lo)), hr=tuple(int(s) for s in np.shape(hi)))

    def fits(self, scale: int) -> bool:
        t, h, w = self.lr
        return self.hr == (t, h * scale, w * scale)


@dataclass
class SRMicroBatch:
    hr: Tensor
    """`(B, T, H, W)` int64 HR codes: the targets at `mask`, the model's input elsewhere."""
    mask: Tensor
    """`(B, T, H, W)` bool: masked HR positions (the loss is on these)."""
    lr: Tensor
    """`(B, T, H/s, W/s)` int64 LR codes after noise augmentation."""
    text: Tensor | None
    """`(B, S, text_dim)` float32 caption embeddings (None: no sample has a caption)."""
    text_mask: Tensor | None
    """`(B, S)` bool: real caption embeddings."""
    lr_keep: Tensor
    """`(B,)` bool: the LR condition is kept (False: dropped)."""
    text_keep: Tensor
    """`(B,)` bool: the caption is kept."""
    sample_ids: list[str]
    stream: int

    @property
    def tokens(self) -> int:
        """HR positions of the micro-batch (what throughput counts)."""
        return int(self.hr.numel())

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.hr.shape[1:])


class SRData(ShardStreams):
    """This rank's SR micro-batches for each optimizer step (see the module docstring)."""

    def __init__(
        self,
        cfg: SRDataConfig,
        *,
        scale: int,
        visual_bits: int,
        text_dim: int,
        seed: int,
        micro_batch: int,
        grad_accum: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        rows = RowPolicy(
            key=PairKey.of,
            usable=lambda task, key: key is not None and key.fits(scale),
            needs=lambda task: (
                f"rows with an SR pair at scale {scale} (sr_video_tokens of s x the video_tokens grid)"
            ),
            name=str,
            hint="Tokenize sources at least sr.scale x the window size with sr.enabled=true",
        )
        super().__init__(
            cfg, seed=seed, grad_accum=grad_accum, tasks={TASK}, rows=rows, rank=rank, world_size=world_size
        )
        self.scale, self.visual_bits, self.text_dim, self.micro_batch = (
            scale,
            visual_bits,
            text_dim,
            micro_batch,
        )
        self._check_has_pairs()

    def _check_has_pairs(self) -> None:
        """Fail at start when the dataset holds no SR pairs, or pairs of another scale."""
        totals = (getattr(self.reader, "manifest", {}) or {}).get("totals") or {}
        if "tokens" in totals and not (totals["tokens"] or {}).get("sr"):
            raise UserError(
                f"{self.cfg.url} holds no super-resolution pairs (no sr_video_tokens): tokenize with sr.enabled=true "
                "from sources at least sr.scale x the window size"
            )
        sr = self.meta.get("sr") or {}
        if sr.get("scale") is not None and int(sr["scale"]) != self.scale:
            raise UserError(
                f"{self.cfg.url} holds SR pairs at scale {sr['scale']}, the model upsamples {self.scale}x; "
                f"set model.scale={sr['scale']} (or null: from the shards)"
            )

    def sample(self, row: dict, rng: np.random.Generator) -> dict:
        """One row -> its masked, noised, maybe condition-dropped sample (numpy arrays)."""
        hr = np.asarray(row["sr_video_tokens"], dtype=np.int64)
        lr = np.asarray(row["video_tokens"], dtype=np.int64).copy()
        codes = 2**self.visual_bits
        for name, arr in (("sr_video_tokens", hr), ("video_tokens", lr)):
            if arr.size and (arr.min() < 0 or arr.max() >= codes):
                raise UserError(
                    f"token row {row.get('sample_id')!r}: {name} range over [{arr.min()}, {arr.max()}], outside the "
                    f"model's {self.visual_bits}-bit codes; the shards come from another MAGVIT-v2"
                )
        n = hr.size
        n_mask = max(1, math.ceil(float(mask_ratio(rng.random())) * n))
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:n_mask]] = True
        noisy = rng.random(lr.shape) < rng.uniform(0.0, self.cfg.lr_noise_max)
        lr[noisy] = rng.integers(0, codes, int(noisy.sum()))
        lr_keep = bool(rng.random() >= self.cfg.lr_dropout)
        text_keep = bool(rng.random() >= self.cfg.text_dropout)
        emb = row.get("text_embedding")
        if emb is not None and len(emb):
            emb = np.asarray(emb, dtype=np.float32)[: self.cfg.text_slots]
            if emb.ndim != 2 or emb.shape[1] != self.text_dim:
                raise UserError(
                    f"token row {row.get('sample_id')!r}: caption embedding shaped {emb.shape}, the model takes "
                    f"(len, {self.text_dim}); the shards were made with another text encoder than the model's text_dim"
                )
        else:
            emb = None
        return dict(hr=hr, mask=mask.reshape(hr.shape), lr=lr, emb=emb, lr_keep=lr_keep, text_keep=text_keep)

    def collate(self, samples: list[dict], ids: list[str], stream: int) -> SRMicroBatch:
        B = len(samples)
        S = max((0 if s["emb"] is None else len(s["emb"]) for s in samples), default=0)
        text = text_mask = None
        if S:
            text = torch.zeros(B, S, self.text_dim)
            text_mask = torch.zeros(B, S, dtype=torch.bool)
            for i, s in enumerate(samples):
                if s["emb"] is not None:
                    text[i, : len(s["emb"])] = torch.from_numpy(s["emb"])
                    text_mask[i, : len(s["emb"])] = True
        return SRMicroBatch(
            hr=torch.from_numpy(np.stack([s["hr"] for s in samples])),
            mask=torch.from_numpy(np.stack([s["mask"] for s in samples])),
            lr=torch.from_numpy(np.stack([s["lr"] for s in samples])),
            text=text,
            text_mask=text_mask,
            lr_keep=torch.tensor([s["lr_keep"] for s in samples]),
            text_keep=torch.tensor([s["text_keep"] for s in samples]),
            sample_ids=ids,
            stream=stream,
        )

    def micro_batches(self, step: int) -> list[SRMicroBatch]:
        """The `grad_accum` micro-batches of this rank for optimizer step `step`."""
        out = []
        for j in range(self.grad_accum):
            sid, local = self.stream_for(j)
            rng = np.random.default_rng([self.seed, step, sid, local])
            rows = self.streams[sid].take(TASK, self.micro_batch)
            samples = [self.sample(r, rng) for r in rows]
            out.append(self.collate(samples, [str(r.get("sample_id")) for r in rows], sid))
        return out
