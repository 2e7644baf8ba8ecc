"""The DeepSpeed training run shared by `train-lm` and `train-sr`: config sections, LR schedule, the step loop
with metrics, checkpoints, exact resume and SIGTERM handling, and the final safetensors export.

    engine, ds_config = start_engine(cfg.train, info, model)        # DeepSpeed engine of the model's loss
    result = run_training(cfg, info, engine, data, Run(export_info=..., model_key="lm", forward=..., ...))
    state, info = load_export("out/lm", fmt="videopoet.lm.v1", what="LM", job="train-lm")

A job supplies its data (`micro_batches(step)` -> micro-batches with a `.tokens` count; `state_dict()` /
`load_state_dict()`; `num_streams`, `dropped_rows`, `skipped_rows`), an engine whose forward the job's
`forward(engine, micro_batch)` calls, and what its metrics records say (`describe`). Everything else is
here, so the two trainers resume, checkpoint and export identically:

Re-running the same command resumes from the latest checkpoint in `output/checkpoints` (model, optimizer,
LR schedule, data readers and buffers): the loss trajectory continues exactly as if the run had never
stopped. SIGTERM (a preemption) checkpoints at the end of the current step and exits. Outputs under
`output`: `config.yaml`, `checkpoints/<tag>/` (DeepSpeed; `latest` names the newest), `metrics.jsonl`,
`tb/` (TensorBoard), and at `max_steps` `model.safetensors` + `config.json` (fp32 weights + export info).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import yaml

from videopoet.core.config import check
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_bytes, atomic_write_text, join
from videopoet.core.log import get_logger

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = get_logger("videopoet.trainer")


@dataclass(kw_only=True)
class OptimSection:
    max_steps: int = 1000
    """Optimizer steps of the whole run (the LR schedule spans them)."""
    stop_at: int | None = None
    """Stop (after a checkpoint) at this step without finishing the run; re-running resumes. null: run to max_steps."""
    micro_batch: int = 2
    """Samples per rank per forward/backward."""
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
    """Seed of the model init, the data order and per-example choices."""
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


def find_file(path: str) -> str:
    """`path` as given when it exists (or is a URL), else relative to the repository root."""
    if os.path.isabs(path) or "://" in path or os.path.exists(path):
        return path
    alt = os.path.join(REPO_ROOT, path)
    return alt if os.path.exists(alt) else path


def build_ds_config(cfg: OptimSection, world_size: int, cuda: bool) -> dict:
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
    return load_ds_config(find_file(cfg.ds_config), {**base, **parse_items(cfg.ds_overrides)})


def check_run_paths(cfg, example: str) -> None:
    """A job config's `output` and `data.url` are set (`__post_init__` of train-lm / train-sr)."""
    check(bool(cfg.output), "output", cfg.output, f"a run folder, e.g. output={example}")
    check(bool(cfg.data.url), "data.url", cfg.data.url, "the token-shard dataset, e.g. data.url=out/tokens")


def check_overrides(items: list[str], allowed: set[str], note: str) -> None:
    """`model.overrides` items are key=value with a key among the model config's fields (`allowed`)."""
    for item in items:
        check(
            "=" in item and item.partition("=")[0] in allowed,
            "overrides",
            item,
            f"key=value items with a key among {', '.join(sorted(allowed))} ({note})",
        )


def lr_schedule(cfg: OptimSection) -> Callable[[int], float]:
    return lambda s: lr_multiplier(
        s, warmup=cfg.warmup_steps, total=cfg.max_steps, min_ratio=cfg.min_lr_ratio
    )


def strip_launcher_args(argv: list[str]) -> list[str]:
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


# ---------------------------------------------------------------------------------------------------------
# export: model.safetensors + config.json, and loading it (or a DeepSpeed checkpoint) back


def export_model(out_dir: str, state: dict[str, torch.Tensor], info: dict, dtype: str = "float32") -> None:
    """`model.safetensors` (weights cast to `dtype`) + `config.json` (`info`, whose "format" names the kind)."""
    from safetensors.torch import save as save_safetensors

    dt = getattr(torch, dtype)
    tensors = {k: v.detach().to(dt).contiguous().cpu() for k, v in state.items()}
    atomic_write_bytes(
        join(out_dir, "model.safetensors"), save_safetensors(tensors, metadata={"format": info["format"]})
    )
    atomic_write_text(join(out_dir, "config.json"), json.dumps(info, indent=2) + "\n")


def load_export(
    path: str, *, fmt: str, what: str, job: str, prefix: str
) -> tuple[dict[str, torch.Tensor], dict]:
    """(fp32 weights, export info) of a trained model: a run folder, its export, or a DeepSpeed checkpoint folder.

    Order: `path/model.safetensors` (+ config.json); else the DeepSpeed checkpoint in `path/checkpoints` or
    `path` itself (consolidated to fp32 from any ZeRO stage; `path` may also be one checkpoint's tag folder,
    whose client state holds the export info). `fmt` is the export format the job writes, `prefix` the
    engine wrapper's state-dict prefix of the model.
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
                f"no trained {what} at {path}: expected model.safetensors + config.json (end of training) or a "
                "DeepSpeed checkpoint folder with a 'latest' file (a run's checkpoints/)"
            )
        info = read_client_state(ckpt_dir, tag).get("export_info")
        if info is None:
            raise UserError(
                f"the checkpoint in {ckpt_dir} was not written by videopoet {job} (no export_info)"
            )
        state = consolidated_state_dict(ckpt_dir, tag, prefix=prefix)
    if info.get("format") not in (None, fmt):
        raise UserError(
            f"{path}: format {info.get('format')!r}, this code reads {fmt} (a {what} written by videopoet {job})"
        )
    return state, info


# ---------------------------------------------------------------------------------------------------------
# the run


class Metrics:
    """Rank 0's metrics sinks: metrics.jsonl and TensorBoard."""

    def __init__(self, output: str, tensorboard: bool, resumed_step: int):
        self.path = join(output, "metrics.jsonl")
        if os.path.exists(self.path):  # a resumed run rewrites what came after its checkpoint
            with open(self.path) as f:
                keep = [
                    line for line in f if line.strip() and json.loads(line).get("step", 0) <= resumed_step
                ]
            atomic_write_text(self.path, "".join(keep))
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(join(output, "tb"), purge_step=resumed_step + 1)

    def write(self, rec: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            s = rec["step"]
            self.tb.add_scalar("loss/all", rec["loss"], s)
            self.tb.add_scalar(f"loss/{rec['task']}", rec["loss"], s)
            for key, value in rec.items():
                if key not in ("step", "loss", "task") and isinstance(value, int | float):
                    self.tb.add_scalar(f"train/{key}", value, s)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def export_step(out_dir: str) -> int | None:
    """The step of the model.safetensors export in `out_dir` (None: none yet)."""
    try:
        with open(join(out_dir, "config.json")) as f:
            step = json.load(f).get("step")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return step if os.path.isfile(join(out_dir, "model.safetensors")) else None


def prune_checkpoints(ckpt_dir: str, keep: int) -> None:
    if keep <= 0:
        return
    tags = sorted(
        d for d in os.listdir(ckpt_dir) if d.startswith("step") and os.path.isdir(join(ckpt_dir, d))
    )
    for tag in tags[:-keep]:
        shutil.rmtree(join(ckpt_dir, tag), ignore_errors=True)


@dataclass
class Run:
    """What a job adds to the shared loop."""

    export_info: dict
    """config.json of the export (and the checkpoints' client state): format, model config, data metadata."""
    model_key: str
    """Key of `export_info` holding the model config; a checkpoint of another model is not resumed."""
    forward: Callable[[Any, Any], tuple[torch.Tensor, dict[str, float | torch.Tensor]]]
    """(engine, micro-batch) -> (loss to backpropagate, sums: `loss_sum` and `count` of the targets, any other
    sum to report per target, e.g. `accuracy`)."""
    describe: Callable[[list], dict]
    """A step's micro-batches -> `task` (its name in metrics), `flops_per_token`, and any other record fields."""
    state_prefix: str
    """State-dict prefix of the model inside the engine's wrapper module (stripped in the export)."""


def start_engine(cfg: OptimSection, info, model: torch.nn.Module, **engine_kwargs) -> tuple[Any, dict]:
    """Activation checkpointing / compile per `cfg`, the DeepSpeed config, the engine: (engine, ds_config)."""
    from videopoet.core import distributed as D

    D.prepare_model(model, activation_checkpointing=cfg.activation_checkpointing, compile=cfg.compile)
    ds_config = build_ds_config(cfg, info.world_size, info.device.type == "cuda")
    engine = D.build_engine(
        model, ds_config, lr_lambda=lr_schedule(cfg), weight_decay=cfg.weight_decay, **engine_kwargs
    )
    return engine, ds_config


def prepare_output(cfg, info) -> None:
    """Rank 0: the run folder with its checkpoints folder and the resolved config.yaml."""
    from videopoet.core.config import save_config

    if info.is_rank0:
        os.makedirs(join(cfg.output, "checkpoints"), exist_ok=True)
        save_config(cfg, cfg.output)


def check_local_output(output: str) -> None:
    if "://" in output and not output.startswith("file://"):
        raise UserError(f"output={output}: DeepSpeed checkpoints need a local (or mounted) folder")


def run_training(cfg, info, engine, data, run: Run) -> dict:
    """Resume, train to `train.stop_at` / `train.max_steps`, checkpoint, export. Every rank calls it.

    `cfg` has `output`, `train` (an `OptimSection`), `log`, `checkpoint`. Returns {step, losses (step, task,
    loss) of the steps run here, export (path or None), tokens_seen}.
    """
    from videopoet.core import distributed as D

    t = cfg.train
    ckpt_dir = join(cfg.output, "checkpoints")
    step, tokens_seen = 0, 0
    if cfg.checkpoint.resume:
        loaded = D.load_checkpoint(engine, ckpt_dir)
        if loaded is not None:
            tag, cs = loaded
            theirs = cs.get("export_info", {}).get(run.model_key)
            if theirs != run.export_info[run.model_key]:
                raise UserError(
                    f"the checkpoint {ckpt_dir}/{tag} is of another model ({theirs}); "
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
    metrics = Metrics(cfg.output, cfg.log.tensorboard, step) if info.is_rank0 else None
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
            "export_info": {**run.export_info, "step": at},
        }
        D.save_checkpoint(engine, ckpt_dir, f"step{at:08d}", client)
        if info.is_rank0:
            prune_checkpoints(ckpt_dir, cfg.checkpoint.keep)
        D.barrier()

    engine.train()
    last_saved = step
    losses: list[tuple[int, str, float]] = []
    try:
        while step < end:
            t0 = time.perf_counter()
            lr = float(engine.get_lr()[0])  # the LR this step's update uses
            mbs = data.micro_batches(step)
            sums: dict[str, Any] = {}
            for mb in mbs:
                loss, part = run.forward(engine, mb)
                engine.backward(loss)
                engine.step()
                for k, v in {**part, "tokens": float(mb.tokens)}.items():  # device sums stay on the device
                    sums[k] = sums.get(k, 0.0) + (v.detach().double() if torch.is_tensor(v) else v)
            keys = sorted(sums)  # read on the host once per step, not after every micro-batch
            acc = D.all_reduce_sum(torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64))
            total = dict(zip(keys, acc.tolist()))
            dt = time.perf_counter() - t0
            step += 1
            tokens_seen += int(total["tokens"])
            desc = run.describe(mbs)
            count = max(total["count"], 1.0)
            step_loss = total["loss_sum"] / count
            losses.append((step, desc["task"], step_loss))
            if info.is_rank0 and (step % cfg.log.every == 0 or step == end):
                tps = total["tokens"] / dt
                gn = engine.get_global_grad_norm()
                extra = {k: v / count for k, v in total.items() if k not in ("loss_sum", "count", "tokens")}
                rec = {
                    "step": step,
                    "task": desc["task"],
                    "loss": step_loss,
                    **extra,
                    "lr": lr,
                    "grad_norm": None if gn is None else float(gn),
                    "tokens": int(total["tokens"]),
                    **{k: v for k, v in desc.items() if k not in ("task", "flops_per_token")},
                    "tokens_per_s": tps,
                    "mfu": desc["flops_per_token"] * tps / (cfg.log.peak_flops * info.world_size),
                    "dropped_rows": data.dropped_rows,
                    "skipped_rows": data.skipped_rows,
                    "step_s": dt,
                }
                metrics.write(rec)
                log.info(
                    "step %d/%d %-24s loss %.4f lr %.2e gnorm %s %.0f tok/s mfu %.2f%%",
                    step,
                    t.max_steps,
                    desc["task"],
                    step_loss,
                    lr,
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
            if info.is_rank0 and export_step(cfg.output) != step:
                state = D.consolidated_state_dict(ckpt_dir, f"step{step:08d}", prefix=run.state_prefix)
                export_model(
                    cfg.output, state, {**run.export_info, "step": step}, cfg.checkpoint.export_dtype
                )
                log.info("exported %s (+ config.json)", exported)
            D.barrier()
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        if metrics is not None:
            metrics.close()
    return {"step": step, "losses": losses, "export": exported, "tokens_seen": tokens_seen}
