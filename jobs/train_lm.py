"""Train the VideoPoet LM on token shards with DeepSpeed ZeRO (stage 1/2/3), alternating one task per step.

    # one process (CPU or one GPU)
    python jobs/train_lm.py --config configs/train_lm_debug.yaml data.url=out/tokens output=out/lm_debug
    videopoet train-lm --config configs/train_lm_debug.yaml data.url=out/tokens output=out/lm_debug
    # one machine, 8 GPUs (either launcher)
    torchrun --nproc_per_node 8 jobs/train_lm.py --config configs/train_lm.yaml data.url=s3://b/tokens output=out/lm
    deepspeed --num_gpus 8 jobs/train_lm.py --config configs/train_lm.yaml data.url=... output=...
    # a cluster: the same command on every node, `output` on a filesystem all nodes share (checkpoints)
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HEAD:29500 jobs/train_lm.py --config configs/train_lm.yaml train.ds_config=configs/ds/zero3.json data.url=... output=/shared/lm
    deepspeed --hostfile hosts jobs/train_lm.py --config configs/train_lm.yaml data.url=... output=/shared/lm
    # CPU, 2 ranks (tests): DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 jobs/train_lm.py --config ...

Re-running the same command resumes from the latest checkpoint in `output/checkpoints` (model, optimizer,
LR schedule, data readers and buffers, mixture RNG): the loss trajectory continues exactly as if the run
had never stopped. SIGTERM (a preemption) checkpoints at the end of the current step and exits.

Before any training the shards are checked against the run (tokenizer ids/checksums, vocabulary sizes
that fit the model's vocabulary, text-embedding width); a bad or mismatched shard stops the job with a
message naming the shard. Data: `jobs/lm_data.py` (task mixture, image/video schedule, one length group
per micro-batch, text dropout). DeepSpeed, activation checkpointing and compile: `core/distributed.py`.

Outputs under `output`: `config.yaml` (resolved config), `checkpoints/<tag>/` (DeepSpeed; `latest` names
the newest), `metrics.jsonl` (one line per logged step: loss, task, lr, grad norm, tokens/s, MFU),
`tb/` (TensorBoard: loss per task, tokens/s, MFU), and at the end `model.safetensors` + `config.json`
(fp32 weights and everything generation needs: LM config, vocabulary, tokenizer and text-encoder ids).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import yaml

from videopoet.core.config import check, from_dict, save_config, to_dict
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_bytes, atomic_write_text, join
from videopoet.core.log import get_logger
from videopoet.jobs.lm_data import DataConfig, LMData, dataset_meta
from videopoet.model.lm import LM_SIZES, LMConfig, VideoPoetLM
from videopoet.model.vocab import Vocab

DEFAULT_CONFIG = "configs/train_lm.yaml"
POSITIONAL = ()
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPORT_FORMAT = "videopoet.lm.v1"
log = get_logger("videopoet.train_lm")


@dataclass(kw_only=True)
class ModelSection:
    size: str = "debug"
    """Named LM size: debug, 300M, 1B, 8B (model/lm.py)."""
    overrides: list[str] = field(default_factory=list)
    """LMConfig fields to override as key=value, e.g. [text_dim=2048, attn_impl=flex]; vocab_size follows the vocabulary."""
    visual_bits: int | None = None
    """Vocabulary: MAGVIT-v2 bits per token (null: from the shards' metadata). Shards with more bits are refused."""
    audio_levels: int | None = None
    """Vocabulary: SoundStream RVQ levels (null: from the shards). Shards with another count are refused."""
    audio_codebook_size: int | None = None
    """Vocabulary: codes per RVQ level (null: from the shards). Shards with larger codebooks are refused."""

    def __post_init__(self) -> None:
        check(self.size in LM_SIZES, "size", self.size, f"one of {', '.join(LM_SIZES)}")
        fields = {f.name for f in dataclasses.fields(LMConfig)} - {"vocab_size"}
        for item in self.overrides:
            key = item.partition("=")[0]
            check(
                "=" in item and key in fields,
                "overrides",
                item,
                f"key=value items with a key among {', '.join(sorted(fields))} (vocab_size follows the vocabulary)",
            )

    def lm_config(self, vocab: Vocab) -> LMConfig:
        return LMConfig.from_name(self.size, **parse_items(self.overrides), vocab_size=vocab.size)


@dataclass(kw_only=True)
class TrainSection:
    max_steps: int = 1000
    """Optimizer steps of the whole run (the LR schedule and the image/video schedule span them)."""
    stop_at: int | None = None
    """Stop (after a checkpoint) at this step without finishing the run; re-running resumes. null: run to max_steps."""
    micro_batch: int = 2
    """Sequences per rank per forward/backward."""
    grad_accum: int = 1
    """Micro-batches per rank per optimizer step. Global batch = micro_batch x grad_accum x ranks."""
    lr: float = 3.0e-4
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """The cosine decays the LR to lr x min_lr_ratio at max_steps."""
    warmup_steps: int = 100
    """Linear warmup from 0 to lr over these steps, then cosine decay."""
    weight_decay: float = 0.1
    """AdamW weight decay of matrices (embeddings included); none on norms and biases."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    eps: float = 1.0e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    seed: int = 0
    """Seed of the model init, the data order, the task mixture and per-example choices."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU. bf16 keeps fp32 master weights in the optimizer."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in backward (less memory, ~1/3 more compute)."""
    compile: bool = False
    """torch.compile each transformer block (GPU; slow to start on CPU)."""
    ds_config: str = "configs/ds/zero2.json"
    """DeepSpeed JSON (relative paths: from the working directory, then the repository root)."""
    ds_overrides: list[str] = field(default_factory=list)
    """DeepSpeed keys to set as dotted.key=value (YAML value), e.g. [zero_optimization.overlap_comm=true]; applied last."""
    ce_chunk_size: int = 1024
    """Tokens per chunk of the output-head cross-entropy (bounds the logits held at once)."""

    def __post_init__(self) -> None:
        for item in self.ds_overrides:
            check("=" in item, "ds_overrides", item, "dotted.key=value items")
        check(self.max_steps >= 1, "max_steps", self.max_steps, ">= 1")
        check(self.stop_at is None or self.stop_at >= 1, "stop_at", self.stop_at, "null or >= 1")
        check(self.micro_batch >= 1, "micro_batch", self.micro_batch, ">= 1")
        check(self.grad_accum >= 1, "grad_accum", self.grad_accum, ">= 1")
        check(self.lr > 0, "lr", self.lr, "> 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "in [0, 1]")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, ">= 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        check(self.eps > 0, "eps", self.eps, "> 0")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, ">= 0")
        check(self.ce_chunk_size >= 1, "ce_chunk_size", self.ce_chunk_size, ">= 1")


@dataclass(kw_only=True)
class LogSection:
    every: int = 10
    """Log (stdout, metrics.jsonl, TensorBoard) every this many steps."""
    tensorboard: bool = True
    """Write TensorBoard events under output/tb."""
    peak_flops: float = 989e12
    """Peak FLOP/s of one accelerator for MFU (H100 dense bf16: 989e12)."""

    def __post_init__(self) -> None:
        check(self.every >= 1, "every", self.every, ">= 1")
        check(self.peak_flops > 0, "peak_flops", self.peak_flops, "> 0")


@dataclass(kw_only=True)
class CheckpointSection:
    every: int = 500
    """Save a DeepSpeed checkpoint every this many steps (and at stop_at / max_steps / SIGTERM)."""
    keep: int = 3
    """Keep the newest this many checkpoints (0: keep all)."""
    resume: bool = True
    """Resume from output/checkpoints/latest when it exists."""
    export_dtype: Literal["float32", "bfloat16"] = "float32"
    """dtype of the final model.safetensors export."""

    def __post_init__(self) -> None:
        check(self.every >= 1, "every", self.every, ">= 1")
        check(self.keep >= 0, "keep", self.keep, ">= 0")


@dataclass(kw_only=True)
class Config:
    output: str = ""
    """Run folder (local path): config, checkpoints, metrics, TensorBoard, the final export."""
    data: DataConfig = field(default_factory=DataConfig)
    """Token shards and the task mixture (jobs/lm_data.py)."""
    model: ModelSection = field(default_factory=ModelSection)
    """Model size and vocabulary."""
    train: TrainSection = field(default_factory=TrainSection)
    """Optimization, precision, DeepSpeed."""
    log: LogSection = field(default_factory=LogSection)
    """Metrics."""
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    """Checkpoints, resume, export."""

    def __post_init__(self) -> None:
        check(bool(self.output), "output", self.output, "a run folder, e.g. output=out/lm")
        check(
            bool(self.data.url),
            "data.url",
            self.data.url,
            "the token-shard dataset, e.g. data.url=out/tokens",
        )


# ---------------------------------------------------------------------------------------------------------


def parse_items(items: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=true"]` -> `{"a.b": 1, "c": True}` (values parsed as YAML scalars)."""
    out = {}
    for item in items:
        key, _, text = item.partition("=")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def lr_multiplier(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR / peak LR after `step` optimizer steps: linear warmup to 1, then cosine down to `min_ratio` at `total`."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_vocab(cfg: ModelSection, meta: dict) -> Vocab:
    shard_vocab = meta.get("vocab") or {}
    values = {}
    for key in ("visual_bits", "audio_levels", "audio_codebook_size"):
        v = getattr(cfg, key)
        if v is None:
            v = shard_vocab.get(key)
        if v is None:
            raise UserError(
                f"model.{key} is null and the token shards record no vocab.{key}; set model.{key}"
            )
        values[key] = int(v)
    return Vocab(**values)


def expected_meta(cfg: Config, vocab: Vocab, text_dim: int) -> dict:
    """What every shard must fit (`ShardReader.check_compatible`; None = not checked)."""
    return {
        "video_tokenizer": cfg.data.expect_video_tokenizer,
        "audio_tokenizer": cfg.data.expect_audio_tokenizer,
        "text_encoder": cfg.data.expect_text_encoder,
        "text_dim": text_dim,
        "vocab": vocab,
    }


def _find(path: str) -> str:
    if os.path.isabs(path) or "://" in path or os.path.exists(path):
        return path
    alt = os.path.join(REPO_ROOT, path)
    return alt if os.path.exists(alt) else path


def build_ds_config(cfg: TrainSection, world_size: int, cuda: bool) -> dict:
    from videopoet.core.distributed import load_ds_config

    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and cuda)
    base = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
        "bf16.enabled": bf16,
        "optimizer.type": "AdamW",
        "optimizer.params.lr": cfg.lr,
        "optimizer.params.betas": list(cfg.betas),
        "optimizer.params.eps": cfg.eps,
        "optimizer.params.weight_decay": cfg.weight_decay,
    }
    return load_ds_config(_find(cfg.ds_config), {**base, **parse_items(cfg.ds_overrides)})


# ---------------------------------------------------------------------------------------------------------
# export: model.safetensors + config.json, and loading for generation


def export_model(out_dir: str, state: dict[str, torch.Tensor], info: dict, dtype: str = "float32") -> None:
    from safetensors.torch import save as save_safetensors

    dt = getattr(torch, dtype)
    tensors = {k: v.detach().to(dt).contiguous().cpu() for k, v in state.items()}
    atomic_write_bytes(
        join(out_dir, "model.safetensors"), save_safetensors(tensors, metadata={"format": EXPORT_FORMAT})
    )
    atomic_write_text(
        join(out_dir, "config.json"), json.dumps({"format": EXPORT_FORMAT, **info}, indent=2) + "\n"
    )


@dataclass
class TrainedLM:
    model: VideoPoetLM
    vocab: Vocab
    info: dict
    """config.json of the export (or the checkpoint's client state): lm, vocab, text_slots, meta, step."""


def load_trained_lm(
    path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TrainedLM:
    """A trained LM from a run folder, its `model.safetensors` export, or a DeepSpeed checkpoint folder.

    Order: `path/model.safetensors` (+ config.json); else the DeepSpeed checkpoint in `path/checkpoints` or
    `path` itself (consolidated to fp32 from any ZeRO stage; `path` may also be one checkpoint's tag folder).
    """
    from safetensors.torch import load as load_safetensors

    from videopoet.core.distributed import consolidated_state_dict, latest_tag, read_client_state

    if os.path.isfile(os.path.join(path, "model.safetensors")):
        try:
            with open(os.path.join(path, "config.json")) as f:
                info = json.load(f)
        except FileNotFoundError:
            raise UserError(f"{path} has model.safetensors but no config.json beside it") from None
        with open(os.path.join(path, "model.safetensors"), "rb") as f:
            state = load_safetensors(f.read())
    else:
        ckpt_dir, tag = path, None
        if os.path.isdir(os.path.join(path, "checkpoints")):
            ckpt_dir = os.path.join(path, "checkpoints")
        elif (
            latest_tag(path) is None and os.path.isdir(path) and latest_tag(os.path.dirname(path.rstrip("/")))
        ):
            ckpt_dir, tag = os.path.dirname(path.rstrip("/")), os.path.basename(path.rstrip("/"))
        if latest_tag(ckpt_dir) is None and tag is None:
            raise UserError(
                f"no trained LM at {path}: expected model.safetensors + config.json (end of training) or a DeepSpeed "
                "checkpoint folder with a 'latest' file (a run's checkpoints/)"
            )
        info = read_client_state(ckpt_dir, tag).get("export_info")
        if info is None:
            raise UserError(
                f"the checkpoint in {ckpt_dir} was not written by videopoet train-lm (no export_info)"
            )
        state = consolidated_state_dict(ckpt_dir, tag)
    if info.get("format") not in (None, EXPORT_FORMAT):
        raise UserError(f"{path}: format {info.get('format')!r}, this code reads {EXPORT_FORMAT}")
    lm_cfg = from_dict(LMConfig, info["lm"])
    model = VideoPoetLM(lm_cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (lm_cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise UserError(
            f"{path}: the weights do not match the LM config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return TrainedLM(
        model=model.to(device=device, dtype=dtype).eval(), vocab=Vocab(**info["vocab"]), info=info
    )


# ---------------------------------------------------------------------------------------------------------
# the run


class _Metrics:
    """Rank 0's metrics sinks: metrics.jsonl and TensorBoard."""

    def __init__(self, cfg: Config, resumed_step: int):
        self.path = join(cfg.output, "metrics.jsonl")
        if os.path.exists(self.path):  # a resumed run rewrites what came after its checkpoint
            with open(self.path) as f:
                keep = [
                    line for line in f if line.strip() and json.loads(line).get("step", 0) <= resumed_step
                ]
            atomic_write_text(self.path, "".join(keep))
        self.tb = None
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(join(cfg.output, "tb"), purge_step=resumed_step + 1)

    def write(self, rec: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            s = rec["step"]
            self.tb.add_scalar("loss/all", rec["loss"], s)
            self.tb.add_scalar(f"loss/{rec['task']}", rec["loss"], s)
            for key in ("lr", "grad_norm", "tokens_per_s", "mfu", "dropped_rows", "skipped_rows"):
                if rec.get(key) is not None:
                    self.tb.add_scalar(f"train/{key}", rec[key], s)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _export_step(out_dir: str) -> int | None:
    """The step of the model.safetensors export in `out_dir` (None: none yet)."""
    try:
        with open(join(out_dir, "config.json")) as f:
            step = json.load(f).get("step")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return step if os.path.isfile(join(out_dir, "model.safetensors")) else None


def _prune_checkpoints(ckpt_dir: str, keep: int) -> None:
    import shutil

    if keep <= 0:
        return
    tags = sorted(
        d for d in os.listdir(ckpt_dir) if d.startswith("step") and os.path.isdir(join(ckpt_dir, d))
    )
    for tag in tags[:-keep]:
        shutil.rmtree(join(ckpt_dir, tag), ignore_errors=True)


def main(cfg: Config) -> dict:
    from videopoet.core import distributed as D

    if "://" in cfg.output and not cfg.output.startswith("file://"):
        raise UserError(f"output={cfg.output}: DeepSpeed checkpoints need a local (or mounted) folder")
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    t = cfg.train

    # -- data first: bad shards stop the run before any process group or model exists --------------------
    meta = dataset_meta(cfg.data.url)
    vocab = resolve_vocab(cfg.model, meta)
    lm_cfg = cfg.model.lm_config(vocab)
    data = LMData(
        cfg.data,
        vocab=vocab,
        text_dim=lm_cfg.text_dim,
        seed=t.seed,
        max_steps=t.max_steps,
        micro_batch=t.micro_batch,
        grad_accum=t.grad_accum,
        rank=rank,
        world_size=world,
    )
    data.check_compatible(expected_meta(cfg, vocab, lm_cfg.text_dim))

    info = D.init_distributed()
    ckpt_dir = join(cfg.output, "checkpoints")
    if info.is_rank0:
        os.makedirs(ckpt_dir, exist_ok=True)
        save_config(cfg, cfg.output)
    export_info = {
        "format": EXPORT_FORMAT,
        "lm": to_dict(lm_cfg),
        "vocab": asdict(vocab),
        "text_slots": cfg.data.text_slots,
        "shards": {
            k: meta.get(k) for k in ("video_tokenizer", "audio_tokenizer", "text_encoder", "vocab", "window")
        },
    }

    torch.manual_seed(t.seed)
    with torch.device(info.device):
        model = VideoPoetLM(lm_cfg)
    flops_fn = model.flops_per_token  # before ZeRO-3 partitions the parameters (their numel becomes 0)
    flops_cache = {}
    n_params = model.num_params()
    D.prepare_model(model, activation_checkpointing=t.activation_checkpointing, compile=t.compile)
    ds_config = build_ds_config(t, info.world_size, info.device.type == "cuda")
    engine = D.build_engine(
        model,
        ds_config,
        lr_lambda=lambda s: lr_multiplier(
            s, warmup=t.warmup_steps, total=t.max_steps, min_ratio=t.min_lr_ratio
        ),
        weight_decay=t.weight_decay,
        chunk_size=t.ce_chunk_size,
    )
    log.info(
        "LM %s: %.2fM params, vocab %d, ZeRO stage %d, %s, %d rank(s), global batch %d",
        cfg.model.size,
        n_params / 1e6,
        vocab.size,
        D.zero_stage(ds_config),
        D.engine_dtype(engine),
        info.world_size,
        t.micro_batch * t.grad_accum * info.world_size,
    )

    step, tokens_seen = 0, 0
    if cfg.checkpoint.resume:
        loaded = D.load_checkpoint(engine, ckpt_dir)
        if loaded is not None:
            tag, cs = loaded
            if cs.get("export_info", {}).get("lm") != export_info["lm"]:
                raise UserError(
                    f"the checkpoint {ckpt_dir}/{tag} is of another model ({cs.get('export_info', {}).get('lm')}); "
                    "use a new output folder or checkpoint.resume=false"
                )
            if cs.get("seed") != t.seed:
                raise UserError(
                    f"the checkpoint {ckpt_dir}/{tag} used train.seed={cs.get('seed')}; resume with it"
                )
            if cs.get("num_streams") != data.num_streams:
                raise UserError(
                    f"the checkpoint {ckpt_dir}/{tag} read the data as {cs.get('num_streams')} streams, this run as "
                    f"{data.num_streams}; set data.streams={cs.get('num_streams')} (any number of ranks dividing it works)"
                )
            data.load_state_dict(cs["data"])
            step, tokens_seen = int(cs["step"]), int(cs.get("tokens_seen", 0))
            log.info("resumed from %s/%s at step %d", ckpt_dir, tag, step)

    end = t.max_steps if t.stop_at is None else min(t.stop_at, t.max_steps)
    metrics = _Metrics(cfg, step) if info.is_rank0 else None
    stop_requested = False

    def on_sigterm(signum, frame):
        nonlocal stop_requested
        stop_requested = True

    old_handler = signal.signal(signal.SIGTERM, on_sigterm)

    def checkpoint(at: int) -> None:
        states = {}
        for part in D.all_gather_object(data.state_dict()):
            states.update(part)
        client = {
            "step": at,
            "seed": t.seed,
            "tokens_seen": tokens_seen,
            "data": states,
            "num_streams": data.num_streams,
            "export_info": {**export_info, "step": at},
        }
        D.save_checkpoint(engine, ckpt_dir, f"step{at:08d}", client)
        if info.is_rank0:
            _prune_checkpoints(ckpt_dir, cfg.checkpoint.keep)
        D.barrier()

    engine.train()
    last_saved = step
    losses: list[tuple[int, str, float]] = []
    try:
        while step < end:
            t0 = time.perf_counter()
            lr = float(engine.get_lr()[0])  # the LR this step's update uses
            mbs = data.micro_batches(step)
            acc = torch.zeros(3, dtype=torch.float64)  # loss sum, target count, tokens
            for mb in mbs:
                b = mb.batch
                loss, sums, counts = engine(
                    b.tokens.to(info.device),
                    b.loss_mask.to(info.device),
                    None if mb.text is None else mb.text.to(info.device),
                    b.text_positions.to(info.device),
                    b.prefix_len.to(info.device),
                )
                engine.backward(loss)
                engine.step()
                acc += torch.tensor(
                    [float(sums.sum()), float(counts.sum()), float(mb.tokens)], dtype=torch.float64
                )
            D.all_reduce_sum(acc)
            dt = time.perf_counter() - t0
            step += 1
            tokens_seen += int(acc[2])
            task = mbs[0].task.name.lower()
            step_loss = float(acc[0] / acc[1].clamp(min=1))
            losses.append((step, task, step_loss))
            if info.is_rank0 and (step % cfg.log.every == 0 or step == end):
                seq_len = mbs[0].seq_len
                if seq_len not in flops_cache:
                    flops_cache[seq_len] = flops_fn(seq_len)
                tps = float(acc[2]) / dt
                gn = engine.get_global_grad_norm()
                rec = {
                    "step": step,
                    "task": task,
                    "loss": step_loss,
                    "lr": lr,
                    "grad_norm": None if gn is None else float(gn),
                    "tokens": int(acc[2]),
                    "seq_len": seq_len,
                    "tokens_per_s": tps,
                    "mfu": flops_cache[seq_len] * tps / (cfg.log.peak_flops * info.world_size),
                    "dropped_rows": data.dropped_rows,
                    "skipped_rows": data.skipped_rows,
                    "step_s": dt,
                }
                metrics.write(rec)
                log.info(
                    "step %d/%d %-24s loss %.4f lr %.2e gnorm %s %.0f tok/s mfu %.2f%%",
                    step,
                    t.max_steps,
                    task,
                    step_loss,
                    rec["lr"],
                    "-" if gn is None else f"{gn:.3f}",
                    tps,
                    100 * rec["mfu"],
                )
            stop = D.any_rank(stop_requested)
            if step % cfg.checkpoint.every == 0 or step == end or stop:
                checkpoint(step)
                last_saved = step
            if stop:
                log.warning("SIGTERM: checkpointed at step %d; re-run the same command to resume", step)
                break
        if last_saved != step:
            checkpoint(step)
        exported = None
        if step >= t.max_steps:
            exported = join(cfg.output, "model.safetensors")
            if info.is_rank0 and _export_step(cfg.output) != step:
                state = D.consolidated_state_dict(ckpt_dir, f"step{step:08d}")
                export_model(cfg.output, state, {**export_info, "step": step}, cfg.checkpoint.export_dtype)
                log.info("exported %s (+ config.json)", exported)
            D.barrier()
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        if metrics is not None:
            metrics.close()
    D.shutdown_distributed()
    return {"step": step, "losses": losses, "export": exported, "tokens_seen": tokens_seen}


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher appends --local_rank=N (LOCAL_RANK is in the environment as well)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("--local_rank=") or a.startswith("--local-rank="):
            continue
        if a in ("--local_rank", "--local-rank"):
            skip = True
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    sys.argv[1:] = _strip_launcher_args(sys.argv[1:])
    job_entry(__file__)
