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
import os
import sys
from dataclasses import asdict, dataclass, field

import torch

from videopoet.core.config import check, from_dict, to_dict
from videopoet.core.errors import UserError
from videopoet.core.log import get_logger
from videopoet.jobs.lm_data import DataConfig, LMData, dataset_meta
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
from videopoet.model.lm import LM_SIZES, LMConfig, VideoPoetLM
from videopoet.model.vocab import Vocab

DEFAULT_CONFIG = "configs/train_lm.yaml"
POSITIONAL = ()
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
        check_overrides(self.overrides, fields, "vocab_size follows the vocabulary")

    def lm_config(self, vocab: Vocab) -> LMConfig:
        return LMConfig.from_name(self.size, **parse_items(self.overrides), vocab_size=vocab.size)


@dataclass(kw_only=True)
class TrainSection(OptimSection):
    ce_chunk_size: int = 1024
    """Bounds the output-head logits held at once to ce_chunk_size x vocabulary (as many as that many tokens' rows): the fused cross-entropy runs over vocabulary chunks of that size."""

    ce_keep_logits: bool = False
    """Keep the head's logits from the forward for the backward instead of recomputing them: one head matmul fewer (about 7% faster at 300M, 4 x 4096 tokens) for micro_batch x seq_len x vocabulary x 2 bytes more memory (8 GiB at 300M, 4 x 4096 tokens, bf16)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.ce_chunk_size >= 1, "ce_chunk_size", self.ce_chunk_size, ">= 1")


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
        check_run_paths(self, "out/lm")


# ---------------------------------------------------------------------------------------------------------


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


def vocab_hint(cfg: ModelSection, meta: dict) -> str:
    """What to change when the config pins a vocabulary smaller than the shards' (e.g. the debug config's
    10-bit MAGVIT-v2 against shards of the committed 18-bit tokenizer)."""
    shard_vocab = meta.get("vocab") or {}
    keys = [
        k
        for k in ("visual_bits", "audio_levels", "audio_codebook_size")
        if getattr(cfg, k) is not None and shard_vocab.get(k) is not None and getattr(cfg, k) < shard_vocab[k]
    ]
    if not keys:
        return ""
    pinned = ", ".join(f"model.{k}={getattr(cfg, k)} (shards: {shard_vocab[k]})" for k in keys)
    unset = " ".join(f"model.{k}=null" for k in keys)
    return f" The config pins {pinned}: pass {unset} to take the vocabulary from the shards."


def expected_meta(cfg: Config, vocab: Vocab, text_dim: int) -> dict:
    """What every shard must fit (`ShardReader.check_compatible`; None = not checked)."""
    return {
        "video_tokenizer": cfg.data.expect_video_tokenizer,
        "audio_tokenizer": cfg.data.expect_audio_tokenizer,
        "text_encoder": cfg.data.expect_text_encoder,
        "text_dim": text_dim,
        "vocab": vocab,
    }


# ---------------------------------------------------------------------------------------------------------
# loading for generation


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
    from videopoet.core.distributed import MODULE_PREFIX

    state, info = load_export(path, fmt=EXPORT_FORMAT, what="LM", job="train-lm", prefix=MODULE_PREFIX)
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


def main(cfg: Config) -> dict:
    from videopoet.core import distributed as D

    check_local_output(cfg.output)
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
    try:
        data.check_compatible(expected_meta(cfg, vocab, lm_cfg.text_dim))
    except UserError as e:
        raise UserError(f"{e}{vocab_hint(cfg.model, meta)}") from None

    info = D.init_distributed()
    prepare_output(cfg, info)
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
    # 6 N counted now: once ZeRO-3 partitions the parameters, their numel on each rank is 0
    six_n = model.flops_per_token(0)
    per_position = model.flops_per_token(1) - six_n

    def flops_fn(seq_len: int) -> int:
        return six_n + per_position * seq_len

    flops_cache: dict[int, int] = {}
    n_params = model.num_params()
    engine, ds_config = start_engine(t, info, model, chunk_size=t.ce_chunk_size, keep_logits=t.ce_keep_logits)
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

    def forward(engine, mb) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b = mb.batch
        loss, sums, counts = engine(
            b.tokens.to(info.device),
            b.loss_mask.to(info.device),
            None if mb.text is None else mb.text.to(info.device),
            b.text_positions.to(info.device),
            b.prefix_len.to(info.device),
        )
        return loss, {"loss_sum": sums.sum(), "count": counts.sum()}  # device tensors: no sync here

    def describe(mbs) -> dict:
        seq_len = mbs[0].seq_len
        if seq_len not in flops_cache:
            flops_cache[seq_len] = flops_fn(seq_len)
        return {"task": mbs[0].task.name.lower(), "seq_len": seq_len, "flops_per_token": flops_cache[seq_len]}

    run = Run(
        export_info=export_info,
        model_key="lm",
        forward=forward,
        describe=describe,
        state_prefix=D.MODULE_PREFIX,
    )
    result = run_training(cfg, info, engine, data, run)
    D.shutdown_distributed()
    return result


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    sys.argv[1:] = strip_launcher_args(sys.argv[1:])
    job_entry(__file__)
