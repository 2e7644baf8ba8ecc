"""Train a super-resolution stage on the SR pairs of token shards with DeepSpeed ZeRO (stage 1/2/3).

    # one process (CPU or one GPU)
    python jobs/train_sr.py --config configs/train_sr_debug.yaml data.url=out/tokens output=out/sr_debug
    videopoet train-sr --config configs/train_sr_debug.yaml data.url=out/tokens output=out/sr_debug
    # one machine, 8 GPUs (either launcher)
    torchrun --nproc_per_node 8 jobs/train_sr.py --config configs/train_sr.yaml data.url=s3://b/tokens output=out/sr
    deepspeed --num_gpus 8 jobs/train_sr.py --config configs/train_sr.yaml data.url=... output=...
    # a cluster: the same command on every node, `output` on a filesystem all nodes share (checkpoints)
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HEAD:29500 jobs/train_sr.py --config configs/train_sr.yaml data.url=... output=/shared/sr
    # CPU, 2 ranks (tests): DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 jobs/train_sr.py --config ...

The model is `model/sr.py` (windowed non-autoregressive transformer over MAGVIT-v2 codes); the data
`jobs/sr_data.py` (masked token modeling with the cosine schedule, LR noise augmentation, independent 10%
dropout of the LR condition and of the caption); the run `jobs/trainer.py`, shared with train-lm:
re-running the same command resumes exactly from the latest checkpoint, SIGTERM checkpoints and exits,
bad or mismatched shards (tokenizer, text encoder, code range, SR scale) stop the job before training.

Outputs under `output`: `config.yaml`, `checkpoints/<tag>/`, `metrics.jsonl` (loss = masked-token cross-
entropy summed over the factors, accuracy = masked codes the argmax gets right, tokens/s, MFU), `tb/`, and
at the end `model.safetensors` + `config.json` (SR config and the shards' tokenizer / text-encoder ids),
which `videopoet generate ... sr.checkpoints=[output]` cascades after the LM.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from videopoet.core.config import check, from_dict, to_dict
from videopoet.core.errors import UserError
from videopoet.core.log import get_logger
from videopoet.jobs.lm_data import dataset_meta
from videopoet.jobs.sr_data import TASK, SRData, SRDataConfig
from videopoet.jobs.trainer import (
    CheckpointSection,
    LogSection,
    OptimSection,
    Run,
    check_local_output,
    check_overrides,
    check_run_paths,
    load_export,
    parse_items,
    prepare_output,
    run_training,
    start_engine,
    strip_launcher_args,
)
from videopoet.model.sr import SR_SIZES, SRConfig, SRTransformer

DEFAULT_CONFIG = "configs/train_sr.yaml"
POSITIONAL = ()
EXPORT_FORMAT = "videopoet.sr.v1"
STATE_PREFIX = "sr."
"""State-dict prefix of the model inside `SRLossModule` (what the engine's checkpoints hold)."""
log = get_logger("videopoet.train_sr")


@dataclass(kw_only=True)
class ModelSection:
    size: str = "debug"
    """Named SR size: debug, small, base (model/sr.py)."""
    overrides: list[str] = field(default_factory=list)
    """SRConfig fields to override as key=value, e.g. [text_dim=2048, window_temporal=[5,8,8]]; visual_bits and scale are set below."""
    visual_bits: int | None = None
    """MAGVIT-v2 bits per code (null: from the shards' metadata). Shards with more bits are refused."""
    scale: int | None = None
    """Spatial upsampling factor (null: the shards' sr.scale). Only pairs at this scale are used."""

    def __post_init__(self) -> None:
        check(self.size in SR_SIZES, "size", self.size, f"one of {', '.join(SR_SIZES)}")
        fields = {f.name for f in dataclasses.fields(SRConfig)} - {"visual_bits", "scale"}
        check_overrides(self.overrides, fields, "visual_bits, scale: model.visual_bits, model.scale")

    def sr_config(self, meta: dict) -> SRConfig:
        bits = self.visual_bits
        if bits is None:
            bits = (meta.get("vocab") or {}).get("visual_bits") or (meta.get("video_tokenizer") or {}).get(
                "codebook_bits"
            )
        if bits is None:
            raise UserError(
                "model.visual_bits is null and the token shards record no vocab.visual_bits; set it"
            )
        scale = self.scale or (meta.get("sr") or {}).get("scale") or 2
        return SRConfig.from_name(
            self.size, **parse_items(self.overrides), visual_bits=int(bits), scale=int(scale)
        )


@dataclass(kw_only=True)
class Config:
    output: str = ""
    """Run folder (local path): config, checkpoints, metrics, TensorBoard, the final export."""
    data: SRDataConfig = field(default_factory=SRDataConfig)
    """Token shards, masking, noise augmentation, condition dropout (jobs/sr_data.py)."""
    model: ModelSection = field(default_factory=ModelSection)
    """Model size, code bits, scale."""
    train: OptimSection = field(default_factory=OptimSection)
    """Optimization, precision, DeepSpeed."""
    log: LogSection = field(default_factory=LogSection)
    """Metrics."""
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    """Checkpoints, resume, export."""

    def __post_init__(self) -> None:
        check_run_paths(self, "out/sr")


class SRLossModule(nn.Module):
    """What the DeepSpeed engine wraps: its forward is the SR stage's masked-token loss, as plain tensors."""

    def __init__(self, sr: SRTransformer):
        super().__init__()
        self.sr = sr

    def forward(
        self,
        hr: Tensor,
        mask: Tensor,
        lr: Tensor,
        text: Tensor | None,
        text_mask: Tensor | None,
        lr_keep: Tensor,
        text_keep: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.sr.loss(hr, mask, lr, text=text, text_mask=text_mask, lr_keep=lr_keep, text_keep=text_keep)
        return out.loss, out.sums, out.counts, out.correct


# ---------------------------------------------------------------------------------------------------------
# loading for generation


@dataclass
class TrainedSR:
    model: SRTransformer
    info: dict
    """config.json of the export (or the checkpoint's client state): sr, text_slots, shards, step."""


def load_trained_sr(
    path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TrainedSR:
    """A trained SR stage from a run folder, its `model.safetensors` export, or a DeepSpeed checkpoint folder."""
    state, info = load_export(path, fmt=EXPORT_FORMAT, what="SR stage", job="train-sr", prefix=STATE_PREFIX)
    if "sr" not in info:
        raise UserError(
            f"{path} is not a super-resolution stage (its config.json has no 'sr'; an LM export?)"
        )
    model = SRTransformer(from_dict(SRConfig, info["sr"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path}: the weights do not match the SR config (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return TrainedSR(model=model.to(device=device, dtype=dtype).eval(), info=info)


# ---------------------------------------------------------------------------------------------------------
# the run


def main(cfg: Config) -> dict:
    from videopoet.core import distributed as D

    check_local_output(cfg.output)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    t = cfg.train

    # -- data first: bad shards stop the run before any process group or model exists --------------------
    meta = dataset_meta(cfg.data.url)
    sr_cfg = cfg.model.sr_config(meta)
    data = SRData(
        cfg.data,
        scale=sr_cfg.scale,
        visual_bits=sr_cfg.visual_bits,
        text_dim=sr_cfg.text_dim,
        seed=t.seed,
        micro_batch=t.micro_batch,
        grad_accum=t.grad_accum,
        rank=rank,
        world_size=world,
    )
    data.check_compatible(
        {
            "video_tokenizer": cfg.data.expect_video_tokenizer,
            "text_encoder": cfg.data.expect_text_encoder,
            "text_dim": sr_cfg.text_dim,
            "vocab": {"visual_bits": sr_cfg.visual_bits},
        }
    )

    info = D.init_distributed()
    prepare_output(cfg, info)
    export_info = {
        "format": EXPORT_FORMAT,
        "sr": to_dict(sr_cfg),
        "text_slots": cfg.data.text_slots,
        "shards": {k: meta.get(k) for k in ("video_tokenizer", "text_encoder", "vocab", "window", "sr")},
    }

    torch.manual_seed(t.seed)
    with torch.device(info.device):
        model = SRTransformer(sr_cfg)
    with torch.device("meta"):  # FLOPs from a twin: ZeRO-3 empties the real model's parameters
        twin = SRTransformer(sr_cfg)
    flops: dict[tuple, int] = {}
    n_params = model.num_params()
    engine, ds_config = start_engine(t, info, model, wrapper=SRLossModule(model))
    log.info(
        "SR %s (%dx, %d-bit codes as %d x %d): %.2fM params, ZeRO stage %d, %s, %d rank(s), global batch %d",
        cfg.model.size,
        sr_cfg.scale,
        sr_cfg.visual_bits,
        sr_cfg.factors,
        sr_cfg.factor_size,
        n_params / 1e6,
        D.zero_stage(ds_config),
        D.engine_dtype(engine),
        info.world_size,
        t.micro_batch * t.grad_accum * info.world_size,
    )

    def forward(engine, mb) -> tuple[Tensor, dict[str, Tensor]]:
        dev = info.device
        loss, sums, counts, correct = engine(
            mb.hr.to(dev),
            mb.mask.to(dev),
            mb.lr.to(dev),
            None if mb.text is None else mb.text.to(dev),
            None if mb.text_mask is None else mb.text_mask.to(dev),
            mb.lr_keep.to(dev),
            mb.text_keep.to(dev),
        )
        return loss, {
            "loss_sum": sums.sum(),  # device tensors: the trainer syncs once per step, not per micro-batch
            "count": counts.sum(),
            "accuracy": correct.sum(),
        }

    def describe(mbs) -> dict:
        grid = mbs[0].grid
        if grid not in flops:
            flops[grid] = twin.flops_per_token(grid, cfg.data.text_slots)
        return {"task": TASK, "grid": list(grid), "flops_per_token": flops[grid]}

    run = Run(
        export_info=export_info, model_key="sr", forward=forward, describe=describe, state_prefix=STATE_PREFIX
    )
    result = run_training(cfg, info, engine, data, run)
    D.shutdown_distributed()
    return result


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    sys.argv[1:] = strip_launcher_args(sys.argv[1:])
    job_entry(__file__)
