"""SoundStream trainer: reconstruction + adversarial training of the RVQ audio tokenizer on a prepared cache.

    from videopoet.tokenizers.soundstream.train import TrainConfig, train
    summary = train(TrainConfig(out_dir="out/ss", data=AudioDataConfig(cache="out/audio_cache")))

Normally run through the job (which also builds the cache from real audio when it is missing):

    videopoet train-tokenizer --config configs/tokenizer/soundstream_small.yaml
    torchrun --nproc_per_node 8 jobs/train_tokenizer.py --config configs/tokenizer/soundstream_small.yaml

One step: random segments of the train split -> generator forward (RVQ with k-means init on the first
batch, EMA codebooks, dead-code restarts, quantizer dropout) -> `SoundStreamLoss.generator_loss` (multi-scale
mel + STFT + commitment, plus hinge adversarial and feature matching from `loss.adversarial_start_step`) ->
Adam step -> discriminator step on real vs. detached reconstruction -> weight EMA of the generator.
On CUDA the convolutions run under bf16 autocast; the quantizer, STFTs and losses run in float32.

Outputs under `out_dir`:
    checkpoint/       config.json + model.safetensors of the EMA generator (`SoundStream.from_pretrained`)
    state/            trainer.pt (generator, discriminators, optimizers, EMA, step, history) and
                      rank{r}.pt (that rank's torch/CUDA RNG and data sampler state): `resume` continues
                      exactly where the run stopped
    metrics.jsonl     one row per logged step and per evaluation (always written)
    tb/               TensorBoard scalars (when tensorboard is importable)
    summary.json      final held-out metrics per category and level, timings, data, paths
    report.md         the same as tables, with a curve summary
    examples/         held-out originals and their reconstructions (16 kHz WAV)

Held-out evaluation encodes and decodes every held-out file of the cache (first `eval_max_seconds`) with the
EMA generator at each of `eval_levels` RVQ levels and reports mel distance, multi-scale STFT distance,
SI-SDR and STOI (metrics.py) per category (speech, music, ...).

Distributed: under torchrun (WORLD_SIZE > 1) the generator and discriminators are wrapped in
DistributedDataParallel, the RVQ's `stats_reducer` all-reduces codebook statistics, each rank draws its
own segments, and rank 0 evaluates and writes.
"""

from __future__ import annotations

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
from torch import Tensor

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
from videopoet.tokenizers.soundstream.config import SoundStreamConfig, SoundStreamLossConfig
from videopoet.tokenizers.soundstream.data import AudioCache, PrepareConfig, SegmentSampler
from videopoet.tokenizers.soundstream.ema import EMA
from videopoet.tokenizers.soundstream.losses import SoundStreamLoss, adversarial_d_loss
from videopoet.tokenizers.soundstream.metrics import mel_distance, multiscale_stft_distance, si_sdr, stoi
from videopoet.tokenizers.soundstream.model import SoundStream

log = get_logger("videopoet.soundstream.train")

STATE_DIR = "state"
CHECKPOINT_DIR = "checkpoint"
METRICS = ("mel_distance", "stft_distance", "si_sdr", "stoi")


@dataclass(kw_only=True)
class AudioDataConfig:
    """Where training audio comes from and how it is cut."""

    cache: str = "out/audio_cache/soundstream"
    """Prepared audio cache (index.json + int16 shards, tokenizers/soundstream/data.py). The trainer reads only this; the job builds it from `prepare.inputs` when it is missing."""
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """How to build the cache from real audio files (used by the job's prepare stage only)."""
    segment_s: float = 1.5
    """Length of each training segment in seconds (rounded down to whole 320-sample frames)."""
    min_segment_dbfs: float = -45.0
    """Segments quieter than this RMS level are redrawn (up to 8 times) so steps are not spent on silence."""
    eval_max_seconds: float = 10.0
    """Held-out files are evaluated on their first this-many seconds."""
    eval_examples: int = 1
    """Held-out files per category whose original and reconstructions are written to examples/ at the end."""

    def __post_init__(self) -> None:
        check(bool(self.cache), "cache", self.cache, "a folder path or URL")
        check(0.1 <= self.segment_s <= 30, "segment_s", self.segment_s, "in [0.1, 30] seconds")
        check(self.min_segment_dbfs < 0, "min_segment_dbfs", self.min_segment_dbfs, "< 0")
        check(self.eval_max_seconds >= 1, "eval_max_seconds", self.eval_max_seconds, ">= 1 (STOI needs ~1 s)")
        check(self.eval_examples >= 0, "eval_examples", self.eval_examples, ">= 0")


@dataclass(kw_only=True)
class TrainConfig:
    """SoundStream training run: model, losses, data, optimization, evaluation and outputs."""

    model: SoundStreamConfig = field(default_factory=SoundStreamConfig)
    """The generator (encoder, RVQ, decoder); saved as checkpoint/config.json."""
    loss: SoundStreamLossConfig = field(default_factory=SoundStreamLossConfig)
    """Loss weights, adversarial start step and discriminator sizes."""
    data: AudioDataConfig = field(default_factory=AudioDataConfig)
    """Audio cache, its preparation, segment length and evaluation lengths."""
    out_dir: str = "out/soundstream_small"
    """Output folder (local path or fsspec URL): checkpoint/, state/, metrics.jsonl, tb/, summary.json, report.md."""
    steps: int = 20000
    """Total optimizer steps (the LR schedule spans them)."""
    batch_size: int = 16
    """Segments per step on each rank (the global batch is batch_size x world size)."""
    lr: float = 3e-4
    """Peak learning rate of the generator (Adam)."""
    betas: tuple[float, float] = (0.5, 0.9)
    """Adam betas of the generator and the discriminators (SoundStream / EnCodec use 0.5, 0.9)."""
    d_lr: float = 3e-4
    """Peak learning rate of the discriminators."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) of both optimizers."""
    warmup_steps: int = 500
    """Linear learning-rate warm-up from 0 over this many steps."""
    min_lr_ratio: float = 0.1
    """After warm-up the learning rate follows a cosine from lr down to lr * min_lr_ratio at `steps`."""
    grad_clip: float = 1000.0
    """Clip the generator's gradient norm to this (0 = no clipping; the mel loss is large, hence the high value)."""
    d_grad_clip: float = 10.0
    """Clip the discriminators' gradient norm to this (0 = no clipping)."""
    ema_decay: float = 0.999
    """Decay of the generator weight EMA that is evaluated and released (warmed up over the first steps)."""
    precision: Literal["bf16", "fp32"] = "bf16"
    """bf16: autocast the convolutions to bfloat16 on CUDA (quantizer, STFTs and losses stay float32); fp32 everywhere. CPU always runs fp32."""
    device: str = "auto"
    """auto (CUDA if available, else CPU), cpu, or cuda; under torchrun each rank uses cuda:LOCAL_RANK."""
    seed: int = 0
    """Seed of weights, RVQ randomness and segment sampling (rank r samples with seed + r)."""
    log_every: int = 50
    """Log training scalars (metrics.jsonl, TensorBoard, console) every this many steps."""
    eval_every: int = 1000
    """Evaluate on held-out audio every this many steps (at the first of eval_levels); 0 = only at the end."""
    eval_levels: list[int] = field(default_factory=lambda: [4, 2, 1])
    """RVQ levels at which the final evaluation runs (the first is also used by periodic evaluations)."""
    ckpt_every: int = 1000
    """Save checkpoint/ and the resumable state every this many steps (and always at the end)."""
    resume: bool = True
    """Continue from out_dir/state when it exists (exactly: same batches, RNG and optimizer state)."""
    max_time_s: float | None = None
    """Stop after this much wall-clock time of training steps (then evaluate and save); null = no limit."""
    stop_after_steps: int | None = None
    """Leave after this step count even if `steps` is not reached (state saved; a re-run resumes). For job schedulers with time limits; null = run to `steps`."""
    tensorboard: bool = True
    """Also write TensorBoard scalars under out_dir/tb (skipped with a warning if tensorboard is missing)."""

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", self.steps, ">= 1")
        check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        check(self.lr > 0, "lr", self.lr, "> 0")
        check(self.d_lr > 0, "d_lr", self.d_lr, "> 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "two numbers in [0, 1)")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0")
        check(self.d_grad_clip >= 0, "d_grad_clip", self.d_grad_clip, ">= 0")
        check(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "in [0, 1)")
        check(self.device in ("auto", "cpu", "cuda"), "device", self.device, "auto, cpu or cuda")
        check(self.log_every >= 1, "log_every", self.log_every, ">= 1")
        check(self.eval_every >= 0, "eval_every", self.eval_every, ">= 0")
        check(self.ckpt_every >= 1, "ckpt_every", self.ckpt_every, ">= 1")
        check(
            len(self.eval_levels) > 0 and all(1 <= n <= self.model.num_levels for n in self.eval_levels),
            "eval_levels",
            self.eval_levels,
            f"a non-empty list of levels in 1..{self.model.num_levels} (model.num_levels)",
        )
        check(self.max_time_s is None or self.max_time_s > 0, "max_time_s", self.max_time_s, "> 0 or null")
        check(
            self.stop_after_steps is None or self.stop_after_steps >= 1,
            "stop_after_steps",
            self.stop_after_steps,
            ">= 1 or null",
        )
        check(
            self.data.prepare.sample_rate == self.model.sample_rate,
            "data.prepare.sample_rate",
            self.data.prepare.sample_rate,
            f"the model's sample_rate ({self.model.sample_rate})",
        )

    def lr_at(self, step: int, peak: float) -> float:
        """Linear warm-up to `peak`, then cosine down to peak * min_lr_ratio at `steps`."""
        if step < self.warmup_steps:
            return peak * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        t = min(max(t, 0.0), 1.0)
        return peak * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


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


def _all_reduce_sum(t: Tensor) -> Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ---- the trainer ------------------------------------------------------------------------------------------
class SoundStreamTrainer:
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

        self.cache = AudioCache(cfg.data.cache)
        if self.cache.sample_rate != cfg.model.sample_rate:
            raise UserError(
                f"audio cache {cfg.data.cache} is at {self.cache.sample_rate} Hz but model.sample_rate is "
                f"{cfg.model.sample_rate}; prepare the cache again at the model's rate"
            )
        self.heldout = self.cache.files("heldout")
        if not self.heldout and self.dist.main:
            log.warning("the cache has no held-out files: the run will report no held-out metrics")

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model = SoundStream(cfg.model).to(self.device).train()
        self.crit = SoundStreamLoss(cfg.loss, sample_rate=cfg.model.sample_rate).to(self.device).train()
        if self.dist.world > 1:
            self.model.quantizer.stats_reducer = _all_reduce_sum
        self.ema = EMA(self.model, decay=cfg.ema_decay)
        self.opt_g = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        disc = self.crit.discriminators
        self.opt_d = (
            torch.optim.AdamW(
                disc.parameters(), lr=cfg.d_lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
            )
            if disc is not None
            else None
        )
        self.g_fwd, self.d_fwd = self.model, disc
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if kind == "cuda" else None
            # broadcast_buffers: rank 0's codebooks (k-means init, dead-code restarts) are copied to all ranks
            self.g_fwd = DDP(self.model, device_ids=ids, broadcast_buffers=True)
            if disc is not None:
                self.d_fwd = DDP(disc, device_ids=ids)
        torch.manual_seed(cfg.seed + 1000 * self.dist.rank)  # quantizer dropout / restarts differ per rank
        if kind == "cuda":
            torch.cuda.manual_seed(cfg.seed + 1000 * self.dist.rank)

        self.segment = cfg.model.hop_length * max(
            1, int(cfg.data.segment_s * cfg.model.sample_rate) // cfg.model.hop_length
        )
        self.sampler = SegmentSampler(
            self.cache,
            segment_samples=self.segment,
            seed=cfg.seed + self.dist.rank,
            min_rms_dbfs=cfg.data.min_segment_dbfs,
        )
        self.step = 0
        self.history: list[dict] = []  # periodic evaluations
        self.timing = {
            "recon": [0.0, 0],
            "adversarial": [0.0, 0],
        }  # seconds, steps (after the first 5 of each)
        self.train_time_s = 0.0
        self.tb = None

    # ---- state --------------------------------------------------------------------------------------------
    def _state_url(self, name: str) -> str:
        return join(self.cfg.out_dir, STATE_DIR, name)

    def save(self) -> None:
        """Write checkpoint/ (EMA generator) and the resumable state (all ranks write their RNG state)."""
        rng = {"torch": torch.get_rng_state(), "sampler": self.sampler.state_dict()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        _torch_save(self._state_url(f"rank{self.dist.rank}.pt"), rng)
        if self.dist.main:
            state = {
                "step": self.step,
                "model": self.model.state_dict(),
                "crit": self.crit.state_dict(),
                "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict() if self.opt_d is not None else None,
                "ema": self.ema.state_dict(),
                "history": self.history,
                "timing": self.timing,
                "train_time_s": self.train_time_s,
                "world_size": self.dist.world,
                "model_config": to_dict(self.cfg.model),
                "loss_config": to_dict(self.cfg.loss),
            }
            _torch_save(self._state_url("trainer.pt"), state)
            self.ema.module.save_pretrained(join(self.cfg.out_dir, CHECKPOINT_DIR))
        self._barrier()

    def load(self) -> bool:
        """Restore the state in out_dir/state if there is one; returns whether it did."""
        url = self._state_url("trainer.pt")
        if not exists(url):
            return False
        state = _torch_load(url, self.device)
        if state["model_config"] != to_dict(self.cfg.model) or state["loss_config"] != to_dict(self.cfg.loss):
            raise UserError(
                f"{url} was trained with another model/loss config than this run's; use a new out_dir, "
                "set resume=false, or restore the earlier config (see out_dir/config.yaml)"
            )
        if state["world_size"] != self.dist.world:
            log.warning(
                "resuming a %d-rank run on %d ranks: batches will differ",
                state["world_size"],
                self.dist.world,
            )
        self.model.load_state_dict(state["model"])
        self.crit.load_state_dict(state["crit"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.opt_d is not None and state["opt_d"] is not None:
            self.opt_d.load_state_dict(state["opt_d"])
        self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.timing = {k: list(v) for k, v in state["timing"].items()}
        self.train_time_s = float(state["train_time_s"])
        rank_url = self._state_url(f"rank{self.dist.rank}.pt")
        if exists(rank_url):
            rng = _torch_load(rank_url, "cpu")
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            self.sampler.load_state_dict(rng["sampler"])
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
                if k not in ("step", "kind") and isinstance(v, int | float):
                    self.tb.add_scalar(f"{row['kind']}/{k}", v, row["step"])
            self.tb.flush()

    # ---- training -----------------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def train_step(self, x: Tensor) -> dict[str, Tensor]:
        cfg, step = self.cfg, self.step
        for group in self.opt_g.param_groups:
            group["lr"] = cfg.lr_at(step, cfg.lr)
        with self._autocast():
            out = self.g_fwd(x)
            g_loss, parts = self.crit.generator_loss(x, out, step)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        parts["grad_norm"] = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        ).detach()
        self.opt_g.step()

        if self.crit.adversarial_active(step):
            for group in self.opt_d.param_groups:
                group["lr"] = cfg.lr_at(step, cfg.d_lr)
            n = x.shape[0]
            recon = out.recon[:, : out.valid_samples].detach().float()
            with self._autocast():  # real and fake in one forward: one DDP reduction per step
                both = self.d_fwd(torch.cat([x[:, : out.valid_samples], recon]))
            real = [(lg[:n].float(), [f[:n] for f in fs]) for lg, fs in both]
            fake = [(lg[n:].float(), [f[n:] for f in fs]) for lg, fs in both]
            d_loss = adversarial_d_loss(real, fake, cfg.loss.adversarial)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            parts["d_grad_norm"] = torch.nn.utils.clip_grad_norm_(
                self.crit.discriminators.parameters(),
                cfg.d_grad_clip if cfg.d_grad_clip > 0 else float("inf"),
            ).detach()
            self.opt_d.step()
            parts["adv_d"] = d_loss.detach()
        self.ema.update(self.model)
        for i, p in enumerate(out.perplexity.detach()):
            parts[f"perplexity_l{i + 1}"] = p
        parts["levels_used"] = out.levels_used.float().mean().detach()
        return parts

    def train(self) -> dict:
        cfg = self.cfg
        resumed = cfg.resume and self.load()
        self._open_logs(resumed)
        if self.dist.main:
            n_g = self.model.num_params()
            n_d = sum(p.numel() for p in self.crit.parameters())
            log.info(
                "SoundStream %.2fM params (discriminators %.2fM) on %s%s, %d ranks; train %.1f s / held-out %.1f s "
                "of audio; segments %d samples x %d per rank; steps %d..%d",
                n_g / 1e6, n_d / 1e6, self.device, " bf16" if self.bf16 else "", self.dist.world,
                self.cache.seconds("train"), self.cache.seconds("heldout"), self.segment, cfg.batch_size,
                self.step, cfg.steps,
            )  # fmt: skip
        sums: dict[str, Tensor] = {}
        window_steps, window_s = 0, 0.0  # step time only: evaluations and saves are not counted
        run_t0 = time.perf_counter()
        phase_seen = {"recon": 0, "adversarial": 0}
        stop_at = cfg.steps if cfg.stop_after_steps is None else min(cfg.steps, cfg.stop_after_steps)
        while self.step < stop_at:
            t0 = time.perf_counter()
            x = torch.from_numpy(self.sampler.batch(cfg.batch_size)).to(self.device, non_blocking=True)
            phase = "adversarial" if self.crit.adversarial_active(self.step) else "recon"
            parts = self.train_step(x)
            self.step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0) + v.float()
            window_steps += 1
            dt = time.perf_counter() - t0
            window_s += dt
            self.train_time_s += dt
            phase_seen[phase] += 1
            if phase_seen[phase] > 5:  # skip the k-means init and cudnn autotuning steps
                self.timing[phase][0] += dt
                self.timing[phase][1] += 1

            if self.step % cfg.log_every == 0 or self.step == stop_at:
                row = {"kind": "train", "step": self.step, "lr": cfg.lr_at(self.step - 1, cfg.lr)}
                row.update({k: float(v) / window_steps for k, v in sums.items()})
                row["step_s"] = window_s / window_steps
                row["audio_s_per_s"] = (
                    window_steps
                    * cfg.batch_size
                    * self.dist.world
                    * self.segment
                    / cfg.model.sample_rate
                    / window_s
                )
                self._log(row)
                if self.dist.main:
                    log.info(
                        "step %d/%d  g %.2f  mel %.2f  stft %.3f  commit %.4f%s  %.3f s/step",
                        self.step, cfg.steps, row.get("g_total", 0), row.get("mel", 0), row.get("stft", 0),
                        row.get("commit", 0),
                        f"  adv_g {row['adv_g']:.3f} feat {row['feat']:.3f} adv_d {row['adv_d']:.3f}" if "adv_d" in row else "",
                        row["step_s"],
                    )  # fmt: skip
                sums, window_steps, window_s = {}, 0, 0.0

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
    def evaluate(self, levels: list[int], examples: int = 0) -> dict:
        """Held-out metrics of the EMA generator: {category: {level: {metric: mean}}} plus per-file rows."""
        bench = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False  # every held-out file has its own length: no autotuning each
        try:
            return self._evaluate(levels, examples)
        finally:
            torch.backends.cudnn.benchmark = bench

    @torch.no_grad()
    def _evaluate(self, levels: list[int], examples: int) -> dict:
        model = self.ema.module.eval()
        rate, max_n = (
            self.cfg.model.sample_rate,
            int(self.cfg.data.eval_max_seconds * self.cfg.model.sample_rate),
        )
        rows, written = [], {}
        for e in self.heldout:
            a = self.cache.audio(e)[:max_n]
            if len(a) < rate:  # STOI needs about a second of audio
                continue
            x = torch.from_numpy(a.astype(np.float32) / 32768.0)[None].to(self.device)
            want_example = written.get(e["category"], 0) < examples
            if want_example:
                self._write_example(e, "orig", x[0])
            for n in levels:
                y = model.decode(model.encode(x, levels=n), length=x.shape[-1])
                rows.append(
                    {
                        "id": e["id"],
                        "category": e["category"],
                        "levels": n,
                        "seconds": len(a) / rate,
                        "mel_distance": float(mel_distance(x, y, rate)[0]),
                        "stft_distance": float(multiscale_stft_distance(x, y)[0]),
                        "si_sdr": float(si_sdr(x, y)[0]),
                        "stoi": float(stoi(x, y, rate)[0]),
                    }
                )
                if want_example:
                    self._write_example(e, f"L{n}", y[0])
            if want_example:
                written[e["category"]] = written.get(e["category"], 0) + 1
        table: dict = {}
        for cat in sorted({r["category"] for r in rows}) + ["all"]:
            for n in levels:
                sel = [r for r in rows if r["levels"] == n and cat in ("all", r["category"])]
                if sel:
                    table.setdefault(cat, {})[str(n)] = {
                        **{m: float(np.mean([r[m] for r in sel])) for m in METRICS},
                        "files": len(sel),
                        "seconds": float(sum(r["seconds"] for r in sel)),
                    }
        return {"metrics": table, "files": rows}

    def _write_example(self, entry: dict, tag: str, wave: Tensor) -> None:
        from videopoet.pipelines.media import wav_bytes

        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in entry["id"].rsplit("/", 1)[-1])
        name = f"{entry['category']}_{safe.rsplit('.', 1)[0]}_{tag}.wav"
        atomic_write_bytes(
            join(self.cfg.out_dir, "examples", name),
            wav_bytes(wave.float().cpu().numpy(), self.cfg.model.sample_rate),
        )

    def periodic_eval(self) -> None:
        if self.dist.main and self.heldout:
            t0 = time.perf_counter()
            res = self.evaluate(self.cfg.eval_levels[:1])
            self.history.append({"step": self.step, "metrics": res["metrics"]})
            for cat, by_level in res["metrics"].items():
                for n, m in by_level.items():
                    self._log({"kind": f"eval/{cat}/L{n}", "step": self.step, **{k: m[k] for k in METRICS}})
            m = res["metrics"].get("speech", res["metrics"]["all"])[str(self.cfg.eval_levels[0])]
            log.info(
                "eval step %d (%.1f s): held-out %s at %d levels: mel %.3f  stft %.3f  SI-SDR %.2f dB  STOI %.3f",
                self.step, time.perf_counter() - t0, "speech" if "speech" in res["metrics"] else "all",
                self.cfg.eval_levels[0], m["mel_distance"], m["stft_distance"], m["si_sdr"], m["stoi"],
            )  # fmt: skip
        self._barrier()

    def finish(self) -> dict:
        """Final evaluation at every eval level, summary.json and report.md (rank 0)."""
        summary: dict = {}
        if self.dist.main:
            t0 = time.perf_counter()
            final = (
                self.evaluate(self.cfg.eval_levels, examples=self.cfg.data.eval_examples)
                if self.heldout
                else {"metrics": {}, "files": []}
            )
            for cat, by_level in final["metrics"].items():
                for n, m in by_level.items():
                    self._log({"kind": f"final/{cat}/L{n}", "step": self.step, **{k: m[k] for k in METRICS}})
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
        timing = {f"{k}_step_s": (t / n if n else None) for k, (t, n) in self.timing.items()}
        curve = []
        url = join(cfg.out_dir, "metrics.jsonl")
        if exists(url):
            curve = [r for r in map(json.loads, read_text(url).splitlines()) if r["kind"] == "train"]
        return {
            "kind": "soundstream",
            "steps": self.step,
            "steps_planned": cfg.steps,
            "finished": self.step >= cfg.steps,
            "train_time_s": round(self.train_time_s, 2),
            "final_eval_s": round(eval_s, 2),
            **timing,
            "batch_size": cfg.batch_size,
            "world_size": self.dist.world,
            "segment_samples": self.segment,
            "audio_seconds_seen": self.step
            * cfg.batch_size
            * self.dist.world
            * self.segment
            / cfg.model.sample_rate,
            "params": self.model.num_params(),
            "adversarial_start_step": cfg.loss.adversarial_start_step,
            "device": torch.cuda.get_device_name(self.device)
            if self.device.type == "cuda"
            else platform.processor() or "cpu",
            "precision": "bf16 autocast" if self.bf16 else "fp32",
            "torch": torch.__version__,
            "data": {
                "cache": cfg.data.cache,
                "totals": self.cache.index.get("totals", {}),
                "heldout_files": [
                    {k: e.get(k) for k in ("id", "category", "license", "seconds")} for e in self.heldout
                ],
                "train_sources": _license_summary(self.cache.files("train")),
            },
            "eval_levels": cfg.eval_levels,
            "eval_max_seconds": cfg.data.eval_max_seconds,
            "heldout": final["metrics"],
            "heldout_files": final["files"],
            "history": self.history,
            "curve": _curve_summary(curve),
            "checkpoint": join(cfg.out_dir, CHECKPOINT_DIR),
            "config": to_dict(cfg),
        }


def _license_summary(files: list[dict]) -> list[dict]:
    """Train audio grouped by (category, package or folder, licence) with seconds, for the report."""
    groups: dict[tuple, dict] = {}
    for f in files:
        origin = (f.get("meta") or {}).get("package") or f["source"].split("/", 1)[0]
        key = (f["category"], origin, f["license"])
        g = groups.setdefault(
            key, {"category": key[0], "origin": key[1], "license": key[2], "files": 0, "seconds": 0.0}
        )
        g["files"] += 1
        g["seconds"] = round(g["seconds"] + f["seconds"], 2)
    return sorted(groups.values(), key=lambda g: (g["category"], g["origin"]))


def _curve_summary(rows: list[dict]) -> list[dict]:
    """The training curve at about 0, 10, 25, 50, 75 and 100 % of the logged steps."""
    if not rows:
        return []
    keys = ("step", "g_total", "mel", "stft", "commit", "adv_g", "feat", "adv_d", "perplexity_l1", "step_s")
    picks = sorted({min(len(rows) - 1, round(f * (len(rows) - 1))) for f in (0, 0.1, 0.25, 0.5, 0.75, 1.0)})
    return [{k: rows[i][k] for k in keys if k in rows[i]} for i in picks]


def render_report(s: dict) -> str:
    """Markdown tables of a run's summary."""
    lines = [
        "# SoundStream training run",
        "",
        f"- steps: {s['steps']} of {s['steps_planned']} planned; training wall time {s['train_time_s']:.0f} s "
        f"({s['device']}, {s['precision']}, torch {s['torch']}, {s['world_size']} rank(s))",
        f"- batch {s['batch_size']} x {s['segment_samples']} samples per rank; {s['audio_seconds_seen'] / 3600:.2f} h "
        f"of audio seen; {s['params'] / 1e6:.2f}M generator parameters; adversarial losses from step "
        f"{s['adversarial_start_step']}",
        f"- step time: {_fmt(s.get('recon_step_s'), 3)} s reconstruction-only, "
        f"{_fmt(s.get('adversarial_step_s'), 3)} s with discriminators",
        "",
        f"## Held-out metrics (EMA generator, first {s['eval_max_seconds']:.0f} s of each held-out file)",
        "",
        "| category | levels | files | seconds | mel distance | STFT distance | SI-SDR (dB) | STOI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cat, by_level in s["heldout"].items():
        for n, m in by_level.items():
            lines.append(
                f"| {cat} | {n} | {m['files']} | {m['seconds']:.1f} | {m['mel_distance']:.3f} | "
                f"{m['stft_distance']:.3f} | {m['si_sdr']:.2f} | {m['stoi']:.3f} |"
            )
    if s["history"]:
        lines += [
            "",
            "## Periodic held-out evaluations (first eval level)",
            "",
            "| step | category | mel | STFT | SI-SDR | STOI |",
            "|---|---|---|---|---|---|",
        ]
        for h in s["history"]:
            for cat, by_level in h["metrics"].items():
                for m in by_level.values():
                    lines.append(
                        f"| {h['step']} | {cat} | {m['mel_distance']:.3f} | {m['stft_distance']:.3f} | "
                        f"{m['si_sdr']:.2f} | {m['stoi']:.3f} |"
                    )
    if s["curve"]:
        keys = [
            k
            for k in ("g_total", "mel", "stft", "commit", "adv_g", "feat", "adv_d", "perplexity_l1")
            if any(k in r for r in s["curve"])
        ]
        lines += [
            "",
            "## Training curve (window means)",
            "",
            "| step | " + " | ".join(keys) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        for r in s["curve"]:
            lines.append(f"| {r['step']} | " + " | ".join(_fmt(r.get(k), 3) for k in keys) + " |")
    lines += ["", "## Data", "", "| split | files | seconds |", "|---|---|---|"]
    for k, v in s["data"]["totals"].items():
        lines.append(f"| {k} | {v['files']} | {v['seconds']:.1f} |")
    lines += ["", "| train category | origin | licence | files | seconds |", "|---|---|---|---|---|"]
    for g in s["data"]["train_sources"]:
        lines.append(
            f"| {g['category']} | {g['origin']} | {g['license']} | {g['files']} | {g['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


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
    """Train (or resume) a SoundStream run; returns the summary (empty on ranks other than 0)."""
    makedirs(cfg.out_dir)
    trainer = SoundStreamTrainer(cfg)
    return trainer.train()


def load_train_config(raw: dict) -> TrainConfig:
    """A TrainConfig from a plain dict (strict: unknown keys raise ConfigError naming them)."""
    return from_dict(TrainConfig, raw)
