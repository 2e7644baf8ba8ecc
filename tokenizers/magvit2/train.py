"""MAGVIT-v2 trainer: image pretraining -> inflation -> video training of the tokenizer, with a 3D GAN.

    from videopoet.tokenizers.magvit2.train import TrainConfig, train
    summary = train(TrainConfig(out_dir="out/magvit2", data=VideoDataConfig(cache="out/video_cache")))

Normally run through the job, which also builds the frame cache from real media when it is missing:

    videopoet train-tokenizer --config configs/tokenizer/magvit2_small.yaml
    videopoet train-tokenizer --config configs/tokenizer/magvit2_small.yaml stage=prepare   # cache only (PyAV)
    torchrun --nproc_per_node 8 jobs/train_tokenizer.py --config configs/tokenizer/magvit2_small.yaml stage=train

Schedule (steps are optimizer steps of the generator):
- steps [0, image_steps): image pretraining: batches of `image_batch_size` 1-frame clips (cached images and
  single video frames, `data.image_sources`). The model is 3D from the start; on 1 frame its causal
  convolutions use only their last time tap, so this is exactly the 2D image model MAGVIT-v2 pretrains.
- at step image_steps, with `inflate`: `inflate_image_trained` on the generator, its EMA and the
  discriminator: the time taps that 1-frame inputs never trained (and the unused sub-frame of each
  time-doubling depth-to-space) are set so that every frame is first processed as the image model
  would, which is what 2D -> 3D inflation (kernel in the last tap, zeros elsewhere) does in the paper.
- steps [image_steps, steps): video batches of `batch_size` clips of `data.frames` frames; every
  `image_every`-th of them an image batch instead (0 = never), so image quality is kept up.
- from `gan_start_step` on: the non-saturating GAN loss (weight `model.adversarial_weight`) in the generator
  loss, and a discriminator step after each generator step: softplus loss + LeCAM (`model.discriminator.
  lecam_weight`) + R1 on reals every `r1_every` steps with weight r1_weight x r1_every (lazy regularization,
  in a separate eager discriminator forward: compiled graphs cannot double-backward).

Generator loss (`MagvitV2.loss_terms`): L2 reconstruction + 0.25 commitment + LFQ entropy (weight annealed by
`model.entropy_weight_at(step)`, 0.1 after `model.entropy_anneal_steps`) + GAN (+ perceptual: `perceptual`
names a factory, off by default). On CUDA the networks run under bf16 autocast (`precision`) with the
quantizer and the losses in fp32 (LFQ disables autocast itself); `compile` torch.compiles the generator's
forward and the discriminator; `channels_last` keeps conv weights and activations in channels_last_3d.

Outputs under `out_dir`:
    checkpoint/    config.json + model.safetensors of the EMA generator (`MagvitV2.from_pretrained`),
                   in `checkpoint_dtype` (bf16 keeps the `small` size near 22 MB)
    state/         trainer.pt (generator, discriminator, optimizers, EMA, step, history) and rank{r}.pt
                   (that rank's torch/CUDA RNG and data sampler state): `resume` continues exactly
    metrics.jsonl  one row per logged step and per evaluation (always written)
    tb/            TensorBoard scalars (when tensorboard is importable)
    summary.json   final held-out metrics (video clips and images): PSNR, SSIM, codebook usage, code
                   perplexity, per-bit balance (see metrics.py for their definitions), timings, data, paths
    report.md      the same as tables
    examples/      held-out originals (top) over reconstructions (bottom), a few frames per clip, JPEG

Distributed: under torchrun (WORLD_SIZE > 1) the generator's forward is wrapped in DistributedDataParallel;
the discriminator's gradients (its loss takes two forwards and a double backward, which DDP does not
support) are all-reduced by hand, and its LeCAM EMAs averaged. Each rank draws its own batches; rank 0
evaluates and writes.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import math
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from videopoet.core.config import check, from_dict, to_dict
from videopoet.core.errors import UserError
from videopoet.core.io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    exists,
    join,
    makedirs,
    read_text,
)
from videopoet.core.log import get_logger
from videopoet.tokenizers.magvit2.config import MagvitConfig
from videopoet.tokenizers.magvit2.data import ClipLoader, PrepareConfig, VideoCache
from videopoet.tokenizers.magvit2.discriminator import Discriminator3D, r1_penalty
from videopoet.tokenizers.magvit2.inflate import inflate_image_trained
from videopoet.tokenizers.magvit2.metrics import clip_ssim, codebook_stats, psnr
from videopoet.tokenizers.magvit2.model import MagvitV2, PerceptualLoss, Reconstruction
from videopoet.tokenizers.soundstream.ema import EMA

log = get_logger("videopoet.magvit2.train")

STATE_DIR = "state"
CHECKPOINT_DIR = "checkpoint"
EVAL_METRICS = (
    "psnr",
    "ssim",
    "usage",
    "usage_vs_uniform",
    "perplexity",
    "bit_balance_min",
    "bit_entropy_mean",
)


@dataclass(kw_only=True)
class VideoDataConfig:
    """Where training clips come from and how they are cut, augmented and evaluated."""

    cache: str = "out/video_cache/magvit2_small"
    """Prepared frame cache (index.json + Parquet of JPEG frames, tokenizers/magvit2/data.py). The trainer reads only this; the job builds it from `prepare.inputs` when it is missing."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """How to build the cache from real videos and images (used by the job's prepare stage only)."""
    frames: int = 17
    """Frames per training clip (1 + 4n for the default time factor; at most prepare.window_frames): a random run of consecutive frames of a cached window."""
    crop: tuple[int, int] = (128, 128)
    """(height, width) of the random training crop and of the centred evaluation crop; [224, 128] trains portrait clips. Multiples of 8."""
    short_side: int | None = None
    """Resize frames so their short side is this before cropping (null = as cached); frames are also scaled up when the crop would not fit."""
    hflip: bool = True
    """Flip training clips horizontally with probability 0.5."""
    image_sources: Literal["images", "frames", "both"] = "both"
    """What image batches draw from: cached images, single frames of cached video windows, or both."""
    still_motion: float = 0.0
    """Share of training video clips made by a virtual camera moving over a cached image (a constant-speed pan and zoom, see still_shift / still_zoom) instead of a real video window: real image content with simple motion, for variety when real videos are few. 0 = real windows only."""
    still_shift: float = 0.3
    """Largest camera shift over one still clip, in crop sizes."""
    still_zoom: float = 1.25
    """Largest zoom factor (in or out) between the first and the last frame of a still clip."""
    decode_on_device: bool = True
    """Decode JPEG frames on the GPU (nvJPEG via torchvision) when training on CUDA; else on the CPU."""
    eval_clips: int | None = 64
    """Held-out video windows evaluated (evenly spaced over the held-out split); null = all."""
    eval_images: int | None = 64
    """Held-out images evaluated (1-frame clips); null = all."""
    eval_batch_size: int = 8
    """Clips per evaluation forward pass."""
    eval_examples: int = 4
    """Held-out clips (and as many images) written to examples/ at the end as original-over-reconstruction JPEGs."""

    def __post_init__(self) -> None:
        check(bool(self.cache), "cache", self.cache, "a folder path or URL")
        check(0.0 <= self.still_motion <= 1.0, "still_motion", self.still_motion, "in [0, 1]")
        check(self.still_shift >= 0, "still_shift", self.still_shift, ">= 0")
        check(self.still_zoom >= 1.0, "still_zoom", self.still_zoom, ">= 1")
        check(self.frames >= 1, "frames", self.frames, ">= 1")
        check(
            self.frames <= self.prepare.window_frames,
            "frames",
            self.frames,
            f"<= prepare.window_frames ({self.prepare.window_frames})",
        )
        check(
            len(self.crop) == 2 and all(c >= 8 and c % 8 == 0 for c in self.crop),
            "crop",
            self.crop,
            "[height, width], multiples of 8",
        )
        check(self.short_side is None or self.short_side >= 8, "short_side", self.short_side, ">= 8 or null")
        for key in ("eval_clips", "eval_images"):
            v = getattr(self, key)
            check(v is None or v >= 0, key, v, ">= 0 or null")
        check(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, ">= 1")
        check(self.eval_examples >= 0, "eval_examples", self.eval_examples, ">= 0")


@dataclass(kw_only=True)
class TrainConfig:
    """MAGVIT-v2 training run: model, data, schedule, optimization, evaluation and outputs."""

    model: MagvitConfig = field(default_factory=lambda: MagvitConfig.from_name("small"))
    """The tokenizer (with its loss weights and its discriminator's config); saved as checkpoint/config.json."""
    data: VideoDataConfig = field(default_factory=VideoDataConfig)
    """Frame cache, its preparation, clip length, crops, augmentation and evaluation sets."""
    out_dir: str = "out/magvit2_small"
    """Output folder (local path or fsspec URL): checkpoint/, state/, metrics.jsonl, tb/, summary.json, report.md, examples/."""
    steps: int = 20000
    """Total generator steps, image pretraining included (the LR schedule spans them)."""
    image_steps: int = 2000
    """Image pretraining: the first this-many steps train on 1-frame clips (0 = video from the start)."""
    inflate: bool = True
    """At step image_steps, inflate the image-trained model for video (inflate_image_trained: zero the untrained earlier time taps)."""
    image_every: int = 0
    """During video training, every this-many-th step is an image batch instead (0 = never)."""
    batch_size: int = 8
    """Video clips per step on each rank (the global batch is batch_size x world size)."""
    image_batch_size: int = 32
    """1-frame clips per image step on each rank."""
    gan_start_step: int | None = 5000
    """Step from which the GAN loss and discriminator updates run (after a reconstruction-only warm-up); null = no GAN."""
    r1_every: int = 4
    """Lazy R1: penalize the discriminator's gradient on reals every this-many discriminator steps, with weight r1_weight x r1_every (0 = no R1)."""
    lr: float = 3e-4
    """Peak learning rate of the generator (Adam; MAGVIT-v2 used 1e-4 for much longer runs)."""
    d_lr: float = 3e-4
    """Peak learning rate of the discriminator."""
    betas: tuple[float, float] = (0.5, 0.99)
    """Adam betas of both optimizers (MAGVIT-v2: 0, 0.99)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) of both optimizers."""
    warmup_steps: int = 500
    """Linear learning-rate warm-up from 0 over this many steps."""
    min_lr_ratio: float = 0.1
    """After warm-up the learning rate follows a cosine from lr down to lr * min_lr_ratio at `steps`."""
    grad_clip: float = 1.0
    """Clip the generator's gradient norm to this (0 = no clipping)."""
    d_grad_clip: float = 1.0
    """Clip the discriminator's gradient norm to this (0 = no clipping)."""
    ema_decay: float = 0.999
    """Decay of the generator weight EMA that is evaluated and released (warmed up over the first steps)."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """bf16: autocast the networks to bfloat16 on CUDA (quantizer and losses stay float32); fp32 everywhere. CPU always runs fp32."""
    compile: bool = False
    """torch.compile the generator's forward and the discriminator (CUDA; first steps of each shape compile)."""
    channels_last: bool = True
    """Keep conv weights and activations in channels_last_3d on CUDA (faster bf16 conv3d); same results."""
    perceptual: str | None = None
    """Perceptual loss factory as `module:attribute`, called once with no arguments; returns a callable (recon, target) -> scalar on (B, 3, T, H, W) in [-1, 1] (see `per_frame`). Weight: model.perceptual_weight. null = off."""
    device: str = "auto"
    """auto (CUDA if available, else CPU), cpu, or cuda; under torchrun each rank uses cuda:LOCAL_RANK."""
    seed: int = 0
    """Seed of weights and of batch sampling (rank r samples with seed + r)."""
    log_every: int = 50
    """Log training scalars (metrics.jsonl, TensorBoard, console) every this many steps."""
    eval_every: int = 2000
    """Evaluate the EMA generator on the held-out split every this many steps; 0 = only at the end."""
    ckpt_every: int = 1000
    """Save checkpoint/ and the resumable state every this many steps (and always at the end)."""
    checkpoint_dtype: Literal["fp32", "bf16"] = "bf16"
    """Dtype of the released checkpoint/ weights (the resumable state is always full precision)."""
    resume: bool = True
    """Continue from out_dir/state when it exists (exactly: same batches, RNG and optimizer state)."""
    init_from: str | None = None
    """Start a new run (not a resume) from the generator weights of this checkpoint folder (config.json + model.safetensors, local path or fsspec URL, as `MagvitV2.from_pretrained` reads); its model config must equal `model` (the loss weights may differ). Fine-tuning a video checkpoint: also image_steps=0 inflate=false. null = random init."""
    max_time_s: float | None = None
    """Stop after this much wall-clock time of training steps (then evaluate and save); null = no limit."""
    stop_after_steps: int | None = None
    """Leave after this step count even if `steps` is not reached (state saved; a re-run resumes). For job schedulers with time limits; null = run to `steps`."""
    tensorboard: bool = True
    """Also write TensorBoard scalars under out_dir/tb (skipped with a warning if tensorboard is missing)."""

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", self.steps, ">= 1")
        check(
            0 <= self.image_steps <= self.steps,
            "image_steps",
            self.image_steps,
            f"in [0, steps={self.steps}]",
        )
        check(self.image_every >= 0, "image_every", self.image_every, ">= 0")
        check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        check(self.image_batch_size >= 1, "image_batch_size", self.image_batch_size, ">= 1")
        check(
            self.gan_start_step is None or self.gan_start_step >= 0,
            "gan_start_step",
            self.gan_start_step,
            ">= 0 or null",
        )
        check(self.r1_every >= 0, "r1_every", self.r1_every, ">= 0")
        check(self.lr > 0, "lr", self.lr, "> 0")
        check(self.d_lr > 0, "d_lr", self.d_lr, "> 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "two numbers in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0")
        check(self.d_grad_clip >= 0, "d_grad_clip", self.d_grad_clip, ">= 0")
        check(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "in [0, 1)")
        check(
            self.perceptual is None or ":" in self.perceptual,
            "perceptual",
            self.perceptual,
            "module:attribute or null",
        )
        check(self.device in ("auto", "cpu", "cuda"), "device", self.device, "auto, cpu or cuda")
        check(self.log_every >= 1, "log_every", self.log_every, ">= 1")
        check(self.eval_every >= 0, "eval_every", self.eval_every, ">= 0")
        check(self.ckpt_every >= 1, "ckpt_every", self.ckpt_every, ">= 1")
        check(self.max_time_s is None or self.max_time_s > 0, "max_time_s", self.max_time_s, "> 0 or null")
        check(
            self.stop_after_steps is None or self.stop_after_steps >= 1,
            "stop_after_steps",
            self.stop_after_steps,
            ">= 1 or null",
        )
        tf, sf = self.model.time_factor, self.model.spatial_factor
        check(
            (self.data.frames - 1) % tf == 0,
            "data.frames",
            self.data.frames,
            f"1 + {tf}n frames for this model (e.g. {1 + tf}, {1 + 4 * tf})",
        )
        check(
            all(c % sf == 0 for c in self.data.crop),
            "data.crop",
            self.data.crop,
            f"multiples of the model's {sf} pixels per token",
        )

    def lr_at(self, step: int, peak: float) -> float:
        """Linear warm-up to `peak`, then cosine down to peak * min_lr_ratio at `steps`."""
        if step < self.warmup_steps:
            return peak * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        t = min(max(t, 0.0), 1.0)
        return peak * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def batch_kind(self, step: int) -> Literal["image", "video"]:
        """What step `step` trains on (see the module docstring's schedule)."""
        if step < self.image_steps:
            return "image"
        if self.image_every and (step - self.image_steps) % self.image_every == self.image_every - 1:
            return "image"
        return "video"

    def gan_active(self, step: int) -> bool:
        return self.gan_start_step is not None and step >= self.gan_start_step


# ---- distributed ------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return _Dist(
        rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0"))
    )


class GeneratorForward(nn.Module):
    """`MagvitV2.reconstruct` as a module forward, for DDP and torch.compile (they wrap `forward`)."""

    def __init__(self, model: MagvitV2):
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        rec = self.model.reconstruct(pixels)
        return rec.recon, rec.codes, rec.normalized


def load_perceptual(spec: str | None, device: torch.device) -> PerceptualLoss | None:
    """`module:attribute` -> the perceptual loss callable its factory returns (frozen, on `device`)."""
    if spec is None:
        return None
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(
            f"perceptual={spec!r} cannot be imported ({e}); give module:attribute of a factory"
        ) from None
    loss = factory()
    if isinstance(loss, nn.Module):
        loss = loss.to(device).eval().requires_grad_(False)
    return loss


# ---- the trainer ------------------------------------------------------------------------------------------
class MagvitTrainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        kind = (
            "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
        )
        if kind == "cuda" and not torch.cuda.is_available():
            raise UserError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
        self.dist = _init_distributed(kind)
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if kind == "cuda" else "cpu")
        if kind == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        self.bf16 = kind == "cuda" and cfg.precision == "bf16"
        self.decode_device = (
            self.device if kind == "cuda" and cfg.data.decode_on_device else torch.device("cpu")
        )

        self.cache = VideoCache(cfg.data.cache)
        d = cfg.data
        loader_kw = dict(
            frames=d.frames, crop=tuple(d.crop), short_side=d.short_side, image_sources=d.image_sources
        )
        self.loader = ClipLoader(
            self.cache,
            seed=cfg.seed + self.dist.rank,
            hflip=d.hflip,
            still_motion=d.still_motion,
            still_shift=d.still_shift,
            still_zoom=d.still_zoom,
            **loader_kw,
        )
        self.eval_loader = ClipLoader(self.cache, split="heldout", seed=0, hflip=False, **loader_kw)
        if not self.eval_loader.rows and self.dist.main:
            log.warning("the cache has no held-out rows: the run will report no held-out metrics")

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = MagvitV2(cfg.model).to(self.device).train()
        if cfg.init_from:
            self._init_from(cfg.init_from)
        self.disc: Discriminator3D | None = None
        if cfg.gan_start_step is not None:
            dcfg = cfg.model.discriminator
            # lazy R1: the penalty every r1_every steps, scaled up so its average weight stays r1_weight
            dcfg = dataclasses.replace(dcfg, r1_weight=dcfg.r1_weight * max(1, cfg.r1_every))
            self.disc = Discriminator3D(dcfg, in_channels=cfg.model.in_channels).to(self.device).train()
        if kind == "cuda" and cfg.channels_last:
            self.model.channels_last_(True)
            if self.disc is not None:
                self.disc.to(memory_format=torch.channels_last_3d)
        self.ema = EMA(self.model, decay=cfg.ema_decay)
        betas = tuple(cfg.betas)
        self.opt_g = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay
        )
        self.opt_d = (
            torch.optim.AdamW(self.disc.parameters(), lr=cfg.d_lr, betas=betas, weight_decay=cfg.weight_decay)
            if self.disc is not None
            else None
        )
        self.perceptual = load_perceptual(cfg.perceptual, self.device)

        self.g_fwd: nn.Module = GeneratorForward(self.model)
        if cfg.compile:
            # image and video shapes each compile their own graphs (R1 runs eagerly, see `_r1_penalty`)
            dyn = torch._dynamo.config
            key = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
            setattr(dyn, key, max(getattr(dyn, key), 32))
            # A graph Inductor fails to compile runs eagerly instead of ending the run (seen on the H100
            # with torch 2.11: an AssertionError in tiling_utils for the 17x128x128 video graph).
            dyn.suppress_errors = True
            self.g_fwd.compile()
            if self.disc is not None:
                self.disc.compile()
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if kind == "cuda" else None
            self.g_fwd = DDP(self.g_fwd, device_ids=ids, broadcast_buffers=False)
        torch.manual_seed(cfg.seed + 1000 * self.dist.rank)
        if kind == "cuda":
            torch.cuda.manual_seed(cfg.seed + 1000 * self.dist.rank)

        self.step = 0
        self.inflated = False
        self.history: list[dict] = []  # periodic evaluations
        # phase -> [seconds, steps], after each phase's first 3 steps (compilation, autotuning)
        self.timing: dict[str, list[float]] = {}
        self.train_time_s = 0.0
        self.tb = None
        self._last_codes: Tensor | None = None

    def _init_from(self, url: str) -> None:
        """Copy the generator weights of a released checkpoint into the fresh model (a resume overrides them)."""
        src = MagvitV2.from_pretrained(url, device="cpu")
        arch = (
            "in_channels",
            "channels",
            "channel_mults",
            "time_downsample",
            "num_res_blocks",
            "norm_groups",
            "upsample_kernel",
            "codebook_bits",
        )

        def value(cfg, key):
            v = getattr(cfg, key)
            return list(v) if isinstance(v, (list, tuple)) else v

        diff = [
            f"{k}: {value(src.cfg, k)} vs {value(self.cfg.model, k)}"
            for k in arch
            if value(src.cfg, k) != value(self.cfg.model, k)
        ]
        if diff:
            raise UserError(
                f"init_from={url} is a different architecture ({'; '.join(diff)}); use a checkpoint of this "
                "model config or set init_from=null"
            )
        self.model.load_state_dict(src.state_dict())  # copies into the model's own parameters and dtype
        log.info("initialised the generator from %s", url)

    # ---- state --------------------------------------------------------------------------------------------
    def _state_url(self, name: str) -> str:
        return join(self.cfg.out_dir, STATE_DIR, name)

    def save(self) -> None:
        """Write checkpoint/ (EMA generator) and the resumable state (every rank writes its RNG state)."""
        rng = {"torch": torch.get_rng_state(), "loader": self.loader.state_dict()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        _torch_save(self._state_url(f"rank{self.dist.rank}.pt"), rng)
        if self.dist.main:
            state = {
                "step": self.step,
                "inflated": self.inflated,
                "model": self.model.state_dict(),
                "disc": self.disc.state_dict() if self.disc is not None else None,
                "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
                "ema": self.ema.state_dict(),
                "history": self.history,
                "timing": self.timing,
                "train_time_s": self.train_time_s,
                "world_size": self.dist.world,
                "model_config": to_dict(self.cfg.model),
            }
            _torch_save(self._state_url("trainer.pt"), state)
            dtype = torch.bfloat16 if self.cfg.checkpoint_dtype == "bf16" else None
            self.ema.module.save_pretrained(join(self.cfg.out_dir, CHECKPOINT_DIR), dtype=dtype)
        self._barrier()

    def load(self) -> bool:
        """Restore the state in out_dir/state if there is one; returns whether it did."""
        url = self._state_url("trainer.pt")
        if not exists(url):
            return False
        state = _torch_load(url, self.device)
        if state["model_config"] != to_dict(self.cfg.model):
            raise UserError(
                f"{url} was trained with another model config than this run's; use a new out_dir, set "
                "resume=false, or restore the earlier config (see out_dir/config.yaml)"
            )
        if (state["disc"] is None) != (self.disc is None):
            raise UserError(
                f"{url} was saved {'without' if state['disc'] is None else 'with'} a discriminator but this run's "
                "gan_start_step says otherwise; restore the earlier gan_start_step or use a new out_dir"
            )
        if state["world_size"] != self.dist.world:
            log.warning(
                "resuming a %d-rank run on %d ranks: batches will differ",
                state["world_size"],
                self.dist.world,
            )
        self.model.load_state_dict(state["model"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.disc is not None:
            self.disc.load_state_dict(state["disc"])
            self.opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.inflated = bool(state["inflated"])
        self.history = list(state["history"])
        self.timing = {k: list(v) for k, v in state["timing"].items()}
        self.train_time_s = float(state["train_time_s"])
        rank_url = self._state_url(f"rank{self.dist.rank}.pt")
        if exists(rank_url):
            rng = _torch_load(rank_url, "cpu")
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            self.loader.load_state_dict(rng["loader"])
        log.info("resumed %s at step %d", self.cfg.out_dir, self.step)
        return True

    def _barrier(self) -> None:
        if self.dist.world > 1:
            dist.barrier()

    # ---- logging ------------------------------------------------------------------------------------------
    def _open_logs(self, resumed: bool) -> None:
        if not self.dist.main:
            return
        url = join(self.cfg.out_dir, "metrics.jsonl")
        if resumed and exists(url):  # drop rows a crashed run logged after its last saved state
            keep = [
                r for r in read_text(url).splitlines() if r.strip() and json.loads(r)["step"] <= self.step
            ]
            atomic_write_text(url, "".join(r + "\n" for r in keep))
        elif exists(url):
            atomic_write_text(url, "")
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(
                    join(self.cfg.out_dir, "tb"), purge_step=self.step + 1 if resumed else None
                )
            except Exception as e:  # tensorboard missing on this machine: the JSONL log still has everything
                log.warning(
                    "TensorBoard scalars disabled (%s: %s); metrics.jsonl has them all", type(e).__name__, e
                )

    def _log(self, row: dict) -> None:
        if not self.dist.main:
            return
        import fsspec

        with fsspec.open(join(self.cfg.out_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "kind") and isinstance(v, int | float) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{row['kind']}/{k}", v, row["step"])
            self.tb.flush()

    # ---- training -----------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def inflate(self) -> None:
        """The image -> video switch: inflate the generator, its EMA and the discriminator (in place)."""
        changed = inflate_image_trained(self.model)
        inflate_image_trained(self.ema.module)
        if self.disc is not None:
            changed += inflate_image_trained(self.disc)
        self.inflated = True
        if self.dist.main:
            log.info(
                "step %d: image pretraining done; inflated %d modules for video", self.step, len(changed)
            )

    def _allreduce_disc(self) -> None:
        grads = [p.grad for p in self.disc.parameters() if p.grad is not None]
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.dist.world
        for g, s in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(s)
        for buf in (self.disc.ema_real, self.disc.ema_fake):
            dist.all_reduce(buf)
            buf /= self.dist.world

    def train_step(self, x: Tensor) -> dict[str, Tensor]:
        """One generator step (and a discriminator step when the GAN is on) on pixels `x` (B, 3, T, H, W)."""
        cfg, step = self.cfg, self.step
        gan = self.disc is not None and cfg.gan_active(step)
        for group in self.opt_g.param_groups:
            group["lr"] = cfg.lr_at(step, cfg.lr)
        with self._autocast():
            recon, codes, normalized = self.g_fwd(x)
            rec = Reconstruction(recon=recon, codes=codes, normalized=normalized)
            g_loss, parts = self.model.loss_terms(
                x, rec, step=step, discriminator=self.disc if gan else None, perceptual=self.perceptual
            )
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        ).detach()
        self.opt_g.step()  # only G: the generator loss also left gradients on D, dropped below
        self.ema.update(self.model)
        self._last_codes = codes.detach()

        if gan:
            for group in self.opt_d.param_groups:
                group["lr"] = cfg.lr_at(step, cfg.d_lr)
            self.opt_d.zero_grad(set_to_none=True)
            with self._autocast():
                d_loss, d_parts = self.disc.loss(x, recon.detach(), r1=False)
            if cfg.r1_every > 0 and step % cfg.r1_every == 0 and self.disc.cfg.r1_weight > 0:
                penalty = self._r1_penalty(x)
                d_loss = d_loss + self.disc.cfg.r1_weight * penalty  # r1_weight x r1_every, see __init__
                d_parts["r1"] = penalty
            d_loss.backward()
            if self.dist.world > 1:
                self._allreduce_disc()
            parts["d_grad_norm"] = torch.nn.utils.clip_grad_norm_(
                self.disc.parameters(), cfg.d_grad_clip if cfg.d_grad_clip > 0 else float("inf")
            ).detach()
            self.opt_d.step()
            parts["d_total"] = d_loss.detach()
            parts.update({k: v.detach() for k, v in d_parts.items()})
        return parts

    def _r1_penalty(self, real: Tensor) -> Tensor:
        """R1 on reals, in its own discriminator forward (StyleGAN2's lazy regularization pass). It needs a
        double backward, which compiled graphs do not support (aot_autograd raises), so with `compile`
        this one forward runs eagerly (`force_eager` stance) while every other discriminator call is
        compiled."""
        stance = torch.compiler.set_stance("force_eager") if self.cfg.compile else nullcontext()
        with stance, self._autocast():
            real = real.detach().requires_grad_(True)
            return r1_penalty(real, self.disc(real))

    def next_batch(self, kind: str) -> Tensor:
        cfg = self.cfg
        if kind == "image":
            x = self.loader.image_batch(cfg.image_batch_size, self.decode_device)
        else:
            x = self.loader.video_batch(cfg.batch_size, self.decode_device)
        return x.to(self.device, non_blocking=True)

    def train(self) -> dict:
        cfg = self.cfg
        resumed = cfg.resume and self.load()
        self._open_logs(resumed)
        if self.dist.main:
            n_g = sum(p.numel() for p in self.model.parameters())
            n_d = sum(p.numel() for p in self.disc.parameters()) if self.disc is not None else 0
            t = self.cache.totals()
            log.info(
                "MAGVIT-v2 %.2fM params (discriminator %.2fM) on %s%s%s, %d ranks; cache: train %d rows / held-out "
                "%d rows; clips %dx%dx%d x %d (images x %d) per rank; steps %d..%d (images < %d, GAN >= %s)",
                n_g / 1e6, n_d / 1e6, self.device, " bf16" if self.bf16 else "", " compiled" if cfg.compile else "",
                self.dist.world, t.get("train", {}).get("rows", 0), t.get("heldout", {}).get("rows", 0),
                cfg.data.frames, *cfg.data.crop, cfg.batch_size, cfg.image_batch_size, self.step, cfg.steps,
                cfg.image_steps, cfg.gan_start_step,
            )  # fmt: skip
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        window = {"steps": 0, "s": 0.0, "clips": 0, "frames": 0}  # step time only: no evals or saves
        run_t0 = time.perf_counter()
        seen: dict[str, int] = {}
        stop_at = cfg.steps if cfg.stop_after_steps is None else min(cfg.steps, cfg.stop_after_steps)
        while self.step < stop_at:
            if cfg.inflate and 0 < cfg.image_steps == self.step and not self.inflated:
                self.inflate()
            kind = cfg.batch_kind(self.step)
            phase = kind + ("+gan" if self.disc is not None and cfg.gan_active(self.step) else "")
            t0 = time.perf_counter()
            x = self.next_batch(kind)
            parts = self.train_step(x)
            self.step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0) + v.float()
                counts[k] = counts.get(k, 0) + 1
            if self.device.type == "cuda":  # real step times (costs only the few ms of CPU batch sampling)
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            window["steps"] += 1
            window["s"] += dt
            window["clips"] += x.shape[0]
            window["frames"] += x.shape[0] * x.shape[2]
            self.train_time_s += dt
            seen[phase] = seen.get(phase, 0) + 1
            if seen[phase] > 3:  # skip compilation and cudnn autotuning steps
                tm = self.timing.setdefault(phase, [0.0, 0])
                tm[0] += dt
                tm[1] += 1

            if self.step % cfg.log_every == 0 or self.step == stop_at:
                row = {
                    "kind": "train",
                    "step": self.step,
                    "phase": phase,
                    "lr": cfg.lr_at(self.step - 1, cfg.lr),
                }
                row.update({k: float(v) / counts[k] for k, v in sums.items()})
                if self._last_codes is not None:
                    row.update(
                        {f"batch_{k}": v for k, v in _batch_code_stats(self._last_codes, cfg.model).items()}
                    )
                row["step_s"] = window["s"] / window["steps"]
                row["clips_per_s"] = window["clips"] / window["s"]
                row["frames_per_s"] = window["frames"] / window["s"]
                self._log(row)
                if self.dist.main:
                    log.info(
                        "step %d/%d %-11s total %.4f  recon %.5f  psnr %.2f  entropy %+.3f (w %.3f)  commit %.4f%s  "
                        "%.3f s/step",
                        self.step, cfg.steps, phase, row.get("total", 0), row.get("recon", 0), row.get("psnr", 0),
                        row.get("entropy", 0), row.get("entropy_weight", 0), row.get("commitment", 0),
                        f"  g_adv {row['g_adversarial']:.3f} d {row['d_adversarial']:.3f}" if "d_adversarial" in row else "",
                        row["step_s"],
                    )  # fmt: skip
                sums, counts = {}, {}
                window = {"steps": 0, "s": 0.0, "clips": 0, "frames": 0}

            out_of_time = cfg.max_time_s is not None and time.perf_counter() - run_t0 > cfg.max_time_s
            if self.dist.world > 1:  # every rank must leave the loop at the same step
                flag = torch.tensor(float(out_of_time), device=self.device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag.item())
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < stop_at and not out_of_time:
                self.periodic_eval()
            if self.step % cfg.ckpt_every == 0 and self.step < stop_at and not out_of_time:
                self.save()
            if out_of_time:
                log.info("max_time_s=%s reached at step %d: stopping early", cfg.max_time_s, self.step)
                break

        self.save()
        if self.step == stop_at < cfg.steps:
            log.info("stopped after step %d of %d (stop_after_steps); re-run to resume", self.step, cfg.steps)
            return {"steps": self.step, "finished": False}
        return self.finish()

    # ---- evaluation ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, examples: int = 0) -> dict:
        """Held-out metrics of the EMA generator: {"video": {...}, "image": {...}} (see metrics.py)."""
        model = self.ema.module.eval()
        d = self.cfg.data
        out: dict = {}
        for kind, limit in (("video", d.eval_clips), ("image", d.eval_images)):
            if limit == 0:
                continue
            specs = self.eval_loader.eval_specs(kind, limit)
            if not specs:
                continue
            psnrs, ssims, codes_all, shown = [], [], [], 0
            for i in range(0, len(specs), d.eval_batch_size):
                x = self.eval_loader.load(specs[i : i + d.eval_batch_size], self.decode_device).to(
                    self.device
                )
                with self._autocast():
                    codes = model.encode(x)
                    y = model.decode(codes)
                psnrs.append(psnr(y, x).cpu())
                ssims.append(clip_ssim(y, x).cpu())
                codes_all.append(codes.flatten().cpu())
                for j in range(min(examples - shown, x.shape[0])):
                    self._write_example(f"{kind}_{shown:02d}", x[j], y[j])
                    shown += 1
            out[kind] = {
                "clips": len(specs),
                "frames": len(specs[0].frames),
                "psnr": float(torch.cat(psnrs).mean()),
                "ssim": float(torch.cat(ssims).mean()),
                **codebook_stats(torch.cat(codes_all), self.cfg.model.codebook_bits),
            }
        return out

    def _write_example(self, name: str, x: Tensor, y: Tensor) -> None:
        """Original frames (top row) over their reconstruction (bottom row): up to 5 evenly spaced frames."""
        from PIL import Image

        t = x.shape[1]
        idx = sorted({round(i * (t - 1) / 4) for i in range(5)}) if t > 1 else [0]
        rows = [torch.cat([v[:, i] for i in idx], dim=-1) for v in (x, y)]  # (3, H, W * n)
        grid = ((torch.cat(rows, dim=-2).float().clamp(-1, 1) + 1) * 127.5).round().byte()
        buf = io.BytesIO()
        Image.fromarray(grid.permute(1, 2, 0).cpu().numpy()).save(buf, format="JPEG", quality=92)
        atomic_write_bytes(join(self.cfg.out_dir, "examples", f"{name}.jpg"), buf.getvalue())

    def periodic_eval(self) -> None:
        if self.dist.main and self.eval_loader.rows:
            t0 = time.perf_counter()
            res = self.evaluate()
            self.history.append({"step": self.step, "metrics": res})
            for kind, m in res.items():
                self._log(
                    {"kind": f"eval/{kind}", "step": self.step, **{k: m[k] for k in EVAL_METRICS if k in m}}
                )
            log.info("eval step %d (%.1f s): %s", self.step, time.perf_counter() - t0, _eval_line(res))
        self._barrier()

    def finish(self) -> dict:
        """Final held-out evaluation, summary.json, report.md and examples/ (rank 0)."""
        summary: dict = {}
        if self.dist.main:
            t0 = time.perf_counter()
            final = self.evaluate(examples=self.cfg.data.eval_examples) if self.eval_loader.rows else {}
            for kind, m in final.items():
                self._log(
                    {"kind": f"final/{kind}", "step": self.step, **{k: m[k] for k in EVAL_METRICS if k in m}}
                )
            if final:
                log.info("final held-out: %s", _eval_line(final))
            summary = self._summary(final, time.perf_counter() - t0)
            atomic_write_text(join(self.cfg.out_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")
            atomic_write_text(join(self.cfg.out_dir, "report.md"), render_report(summary))
            if self.tb is not None:
                self.tb.close()
            log.info("wrote %s (summary.json, report.md, checkpoint/)", self.cfg.out_dir)
        self._barrier()
        return summary

    def _summary(self, final: dict, eval_s: float) -> dict:
        cfg = self.cfg
        curve = []
        url = join(cfg.out_dir, "metrics.jsonl")
        if exists(url):
            curve = [r for r in map(json.loads, read_text(url).splitlines()) if r["kind"] == "train"]
        timing = {}
        for phase, (s, n) in self.timing.items():
            if n:
                per = cfg.image_batch_size if phase.startswith("image") else cfg.batch_size
                timing[phase] = {
                    "step_s": s / n,
                    "clips_per_s": per * self.dist.world * n / s,
                    "steps_timed": n,
                }
        ckpt = join(cfg.out_dir, CHECKPOINT_DIR)
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(join(ckpt, "model.safetensors"))
        heldout_sources = [s for s in self.cache.index.get("sources", []) if s["split"] == "heldout"]
        return {
            "kind": "magvit2",
            "steps": self.step,
            "steps_planned": cfg.steps,
            "finished": self.step >= cfg.steps,
            "train_time_s": round(self.train_time_s, 2),
            "final_eval_s": round(eval_s, 2),
            "timing": timing,
            "schedule": {
                "image_steps": cfg.image_steps,
                "inflated": self.inflated,
                "image_every": cfg.image_every,
                "gan_start_step": cfg.gan_start_step,
                "r1_every": cfg.r1_every,
            },
            "batch_size": cfg.batch_size,
            "image_batch_size": cfg.image_batch_size,
            "world_size": self.dist.world,
            "clip": [cfg.data.frames, *cfg.data.crop],
            "tokens_per_clip": int(np.prod(cfg.model.latent_shape(cfg.data.frames, *cfg.data.crop))),
            "params": {
                "generator": sum(p.numel() for p in self.model.parameters()),
                "discriminator": sum(p.numel() for p in self.disc.parameters())
                if self.disc is not None
                else 0,
            },
            "device": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else platform.processor() or "cpu",
            "precision": "bf16 autocast" if self.bf16 else "fp32",
            "compile": cfg.compile,
            "torch": torch.__version__,
            "data": {
                "cache": cfg.data.cache,
                "totals": self.cache.totals(),
                "heldout_sources": [
                    {k: s.get(k) for k in ("id", "kind", "license", "rows")} for s in heldout_sources
                ],
                "train_sources": _license_summary(
                    [s for s in self.cache.index.get("sources", []) if s["split"] == "train"]
                ),
            },
            "heldout": final,
            "codebook_usage": "usage = distinct codes / min(2^K, eval tokens); usage_vs_uniform = distinct codes / "
            "expected distinct codes of as many uniform draws; bit_balance = 1 - |2 p_i - 1| per bit (metrics.py)",
            "history": self.history,
            "curve": _curve_summary(curve),
            "checkpoint": {
                "path": ckpt,
                "dtype": cfg.checkpoint_dtype,
                "bytes": fs.size(path) if fs.exists(path) else None,
            },
            "config": to_dict(cfg),
        }


def _batch_code_stats(codes: Tensor, model_cfg: MagvitConfig) -> dict[str, float]:
    s = codebook_stats(codes, model_cfg.codebook_bits)
    return {k: s[k] for k in ("usage", "bit_balance_min")}


def _eval_line(res: dict) -> str:
    return "; ".join(
        f"{kind} ({m['clips']} x {m['frames']} frames): PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  usage "
        f"{m['usage']:.3f} (vs uniform {m['usage_vs_uniform']:.3f})  bit balance min {m['bit_balance_min']:.3f}"
        for kind, m in res.items()
    )


def _license_summary(sources: list[dict]) -> list[dict]:
    """Train sources grouped by (kind, package or folder, licence) with rows, for the report."""
    groups: dict[tuple, dict] = {}
    for s in sources:
        origin = (s.get("meta") or {}).get("package") or s["source"].split("/", 1)[0]
        key = (s["kind"], origin, s["license"])
        g = groups.setdefault(
            key, {"kind": key[0], "origin": key[1], "license": key[2], "files": 0, "rows": 0}
        )
        g["files"] += 1
        g["rows"] += s["rows"]
    return sorted(groups.values(), key=lambda g: (g["kind"], g["origin"]))


def _curve_summary(rows: list[dict]) -> list[dict]:
    """The training curve at about 0, 10, 25, 50, 75 and 100 % of the logged steps."""
    if not rows:
        return []
    keys = ("step", "phase", "total", "recon", "psnr", "entropy", "commitment", "g_adversarial", "d_adversarial",
            "r1", "batch_usage", "step_s")  # fmt: skip
    picks = sorted({min(len(rows) - 1, round(f * (len(rows) - 1))) for f in (0, 0.1, 0.25, 0.5, 0.75, 1.0)})
    return [{k: rows[i][k] for k in keys if k in rows[i]} for i in picks]


def render_report(s: dict) -> str:
    """Markdown tables of a run's summary."""
    sch = s["schedule"]
    lines = [
        "# MAGVIT-v2 training run",
        "",
        f"- steps: {s['steps']} of {s['steps_planned']} planned; training wall time {s['train_time_s']:.0f} s "
        f"({s['device']}, {s['precision']}{', compiled' if s['compile'] else ''}, torch {s['torch']}, "
        f"{s['world_size']} rank(s))",
        f"- clips {s['clip'][0]}x{s['clip'][1]}x{s['clip'][2]} ({s['tokens_per_clip']} tokens), batch {s['batch_size']} "
        f"(images {s['image_batch_size']}) per rank; {s['params']['generator'] / 1e6:.2f}M generator / "
        f"{s['params']['discriminator'] / 1e6:.2f}M discriminator parameters",
        f"- schedule: images for {sch['image_steps']} steps (inflated: {sch['inflated']}), GAN from step "
        f"{sch['gan_start_step']}, lazy R1 every {sch['r1_every']}",
        f"- checkpoint: {s['checkpoint']['path']} ({s['checkpoint']['dtype']}, {s['checkpoint']['bytes']} bytes)",
        "",
        "| phase | s/step | clips/s | steps timed |",
        "|---|---|---|---|",
    ]
    for phase, t in s["timing"].items():
        lines.append(f"| {phase} | {t['step_s']:.4f} | {t['clips_per_s']:.1f} | {t['steps_timed']} |")
    lines += [
        "",
        "## Held-out metrics (EMA generator, centre crops)",
        "",
        "| set | clips | frames | PSNR (dB) | SSIM | usage | usage vs uniform | perplexity | bit balance min | bit entropy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, m in s["heldout"].items():
        lines.append(
            f"| {kind} | {m['clips']} | {m['frames']} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['usage']:.3f} | "
            f"{m['usage_vs_uniform']:.3f} | {m['perplexity']:.0f} | {m['bit_balance_min']:.3f} | "
            f"{m['bit_entropy_mean']:.3f} |"
        )
    lines += ["", f"Codebook usage: {s['codebook_usage']}."]
    if s["history"]:
        lines += [
            "",
            "## Periodic held-out evaluations",
            "",
            "| step | set | PSNR | SSIM | usage |",
            "|---|---|---|---|---|",
        ]
        for h in s["history"]:
            for kind, m in h["metrics"].items():
                lines.append(
                    f"| {h['step']} | {kind} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['usage']:.3f} |"
                )
    if s["curve"]:
        keys = [k for k in ("total", "recon", "psnr", "entropy", "commitment", "g_adversarial", "d_adversarial",
                            "batch_usage", "step_s") if any(k in r for r in s["curve"])]  # fmt: skip
        lines += ["", "## Training curve (window means)", "", "| step | phase | " + " | ".join(keys) + " |"]
        lines.append("|---" * (len(keys) + 2) + "|")
        for r in s["curve"]:
            vals = " | ".join("-" if r.get(k) is None else f"{r[k]:.4g}" for k in keys)
            lines.append(f"| {r['step']} | {r.get('phase', '')} | {vals} |")
    lines += ["", "## Data", "", "| split | sources | rows | MB |", "|---|---|---|---|"]
    for k, v in s["data"]["totals"].items():
        lines.append(f"| {k} | {v['sources']} | {v['rows']} | {v['bytes'] / 1e6:.1f} |")
    lines += ["", "| train kind | origin | licence | files | rows |", "|---|---|---|---|---|"]
    for g in s["data"]["train_sources"]:
        lines.append(f"| {g['kind']} | {g['origin']} | {g['license']} | {g['files']} | {g['rows']} |")
    return "\n".join(lines) + "\n"


def _torch_save(url: str, obj: dict) -> None:
    atomic_write(url, lambda f: torch.save(obj, f))


def _torch_load(url: str, device) -> dict:
    import fsspec

    try:
        with fsspec.open(url, "rb") as f:
            return torch.load(f, map_location=device, weights_only=False)
    except Exception as e:
        raise UserError(
            f"cannot read training state {url} ({type(e).__name__}: {e}); delete it or set resume=false"
        ) from None


def train(cfg: TrainConfig) -> dict:
    """Train (or resume) a MAGVIT-v2 run; returns the summary (empty on ranks other than 0)."""
    makedirs(cfg.out_dir)
    return MagvitTrainer(cfg).train()


def prepare(cfg: TrainConfig, resolvers=None) -> dict:
    """Build the frame cache of a run from its `data.prepare.inputs` (needs PyAV)."""
    from videopoet.tokenizers.magvit2.data import prepare_cache

    index = prepare_cache(cfg.data.prepare, cfg.data.cache, resolvers=resolvers)
    for key, t in index["totals"].items():
        log.info("cache %s: %-14s %4d sources %6d rows %7.1f MB", cfg.data.cache, key, t["sources"], t["rows"],
                 t["bytes"] / 1e6)  # fmt: skip
    return index


def load_train_config(raw: dict) -> TrainConfig:
    """A TrainConfig from a plain dict (strict: unknown keys raise ConfigError naming them)."""
    return from_dict(TrainConfig, raw)


def render_job_yaml(cfg: TrainConfig, header: str = "") -> str:
    """The train-tokenizer job's YAML for this run, every key documented (how configs/tokenizer/magvit2_*.yaml
    were made: `python -m videopoet.tokenizers.magvit2.train debug|small`)."""
    import textwrap

    from videopoet.core.config import documented_yaml, field_docs
    from videopoet.jobs.train_tokenizer import Config

    docs = field_docs(Config)
    lines = [header.rstrip("\n")] if header else []
    for key, value in (("kind", "magvit2"), ("stage", "all"), ("magvit2", None)):
        lines += [f"# {ln}" for ln in textwrap.wrap(docs[key], width=98)]
        lines.append(f"{key}: {value}" if value else f"{key}:")
    lines += [("  " + ln) if ln else ln for ln in documented_yaml(cfg).splitlines()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # print a documented job YAML for a named model size (defaults otherwise)
    import sys

    size = sys.argv[1] if len(sys.argv) > 1 else "small"
    sys.stdout.write(render_job_yaml(TrainConfig(model=MagvitConfig.from_name(size))))
