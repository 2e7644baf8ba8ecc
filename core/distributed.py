"""The one place that touches torch.distributed and DeepSpeed: process group, engine, activation checkpointing,
torch.compile, checkpoints and their consolidation. Model code (`model/`) never imports any of it.

    info = init_distributed()                       # gloo on CPU, nccl on GPU; also works unlaunched (1 process)
    ds = load_ds_config("configs/ds/zero2.json", {"bf16.enabled": True})
    prepare_model(model, activation_checkpointing=True, compile=False)
    engine = build_engine(model, ds, lr_lambda=lambda step: 1.0, weight_decay=0.1)
    loss, sums, counts = engine(tokens, loss_mask, text, text_positions, prefix_len)
    engine.backward(loss); engine.step()
    save_checkpoint(engine, "out/checkpoints", "step00000100", client_state={...})
    state = consolidated_state_dict("out/checkpoints")     # fp32 LM weights from any ZeRO stage
    engine = build_engine(sr_model, ds, ..., wrapper=SRLossModule(sr_model))   # another model's loss

Launchers set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (`torchrun`, `deepspeed`); a plain
`python` run gets a one-process group on a free local port. On a machine without CUDA, DeepSpeed is
pointed at its CPU accelerator (`DS_ACCELERATOR=cpu`) before it is imported, and the backend is gloo.

DeepSpeed JSON configs (`configs/ds/zero{1,2,3}.json`) hold what is specific to a ZeRO stage; the trainer
fills in batch sizes, accumulation, clipping, optimizer hyper-parameters and precision from its own config
(dotted-key overrides), so one JSON serves every model size. The optimizer is torch's AdamW
(`"torch_adam": true`): DeepSpeed's fused Adam would JIT-compile a C++/CUDA op on first use.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from videopoet.core.errors import UserError
from videopoet.core.log import get_logger

log = get_logger(__name__)

MODULE_PREFIX = "lm."
"""State-dict prefix the engine's wrapper (`LossModule`) adds in front of the LM's own keys."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _point_deepspeed_at_cpu_if_needed() -> None:
    # DeepSpeed picks its accelerator at import time and probes for CUDA; without a GPU it must be told.
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _skip_cpu_shm_comm_op() -> None:
    """On CPU, DeepSpeed's communication backend JIT-compiles a shared-memory all-reduce op (~1.5 min on a
    2-core machine, cached in ~/.cache/torch_extensions; a build killed half-way leaves a lock that hangs
    later runs). It only speeds up CPU all-reduce, which gloo does anyway: skip it unless
    VIDEOPOET_DS_SHM_COMM=1."""
    if torch.cuda.is_available() or os.environ.get("VIDEOPOET_DS_SHM_COMM") == "1":
        return
    import importlib

    # not `import deepspeed.comm.torch as m`: the package's `torch` attribute (torch itself) shadows it
    backend = importlib.import_module("deepspeed.comm.torch")
    backend.build_shm_op = lambda: None


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> DistInfo:
    """Join (or create) the process group: nccl with one GPU per local rank, gloo on CPU."""
    _point_deepspeed_at_cpu_if_needed()
    import deepspeed
    import torch.distributed as dist

    if "RANK" not in os.environ:  # unlaunched `python jobs/x.py`: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        _skip_cpu_shm_comm_op()
        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            verbose=False,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def is_rank0() -> bool:
    return rank() == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (picklable objects; small ones)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of `t` over ranks (in place, returned). CPU tensors travel through the GPU under nccl."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            x = t.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(x, op=dist.ReduceOp.SUM)
            t.copy_(x.cpu())
        else:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any rank (e.g. a stop request seen by one rank)."""
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)


# ---------------------------------------------------------------------------------------------------------
# DeepSpeed config


def set_dotted(d: dict, key: str, value: Any) -> None:
    """`set_dotted(cfg, "zero_optimization.stage", 3)`: set a nested key, creating sections on the way."""
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"DeepSpeed config override {key!r}: {p!r} is a value, not a section")
    node[parts[-1]] = value


def load_ds_config(path: str, overrides: dict[str, Any] | None = None) -> dict:
    """A DeepSpeed JSON config (local path or fsspec URL) with dotted-key overrides applied."""
    import fsspec

    try:
        with fsspec.open(path, "r", encoding="utf-8") as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise UserError(
            f"DeepSpeed config {path} does not exist; see configs/ds/ for zero1/2/3.json"
        ) from None
    except json.JSONDecodeError as e:
        raise UserError(f"DeepSpeed config {path} is not valid JSON: {e}") from None
    for key, value in (overrides or {}).items():
        set_dotted(cfg, key, value)
    return cfg


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


# ---------------------------------------------------------------------------------------------------------
# model wrapping


class LossModule(nn.Module):
    """What the DeepSpeed engine wraps: its forward is the LM's chunked loss, returned as plain tensors.

    The output head's weight is used directly by the chunked cross-entropy (not through `lm_head.forward`),
    so under ZeRO-3 it is registered as an external parameter of this module: gathered for its forward and
    again for its backward (where the checkpointed chunks recompute their logits).
    """

    def __init__(self, lm: nn.Module, chunk_size: int = 1024, keep_logits: bool = False):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size
        self.keep_logits = keep_logits

    def forward(
        self,
        tokens: Tensor,
        loss_mask: Tensor,
        text: Tensor | None,
        text_positions: Tensor | None,
        prefix_len: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        out = self.lm.loss(
            tokens,
            loss_mask,
            text=text,
            text_positions=text_positions,
            prefix_len=prefix_len,
            chunk_size=self.chunk_size,
            keep_logits=self.keep_logits,
        )
        # Keep the text projection in every backward, with a zero gradient when no caption reaches it (text-free
        # tasks, a batch whose captions were all dropped). A parameter that takes no part in a backward keeps
        # its previous gradient in ZeRO-3's partitioned buffers, and the step applies that stale gradient
        # again (measured: the grad norm of a text-free step was 4% off ZeRO-2's and one process's).
        proj = self.lm.text_proj
        loss = out.loss + 0.0 * proj(out.loss.new_zeros(1, proj.in_features, dtype=proj.weight.dtype)).sum()
        return loss, out.sums, out.counts


def prepare_model(model: nn.Module, *, activation_checkpointing: bool, compile: bool) -> nn.Module:
    """Activation checkpointing per transformer block, and `torch.compile` per block (torchtitan style).

    Blocks are compiled in place (`Module.compile`), so parameter names - and checkpoints - are unchanged.
    """
    if hasattr(model, "gradient_checkpointing"):
        model.gradient_checkpointing = activation_checkpointing
    if compile:
        for block in model.blocks:
            block.compile()
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear and embedding weights), none on norms and biases."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_engine(
    model: nn.Module,
    ds_config: dict,
    *,
    lr_lambda: Callable[[int], float],
    weight_decay: float,
    chunk_size: int = 1024,
    keep_logits: bool = False,
    wrapper: nn.Module | None = None,
):
    """Wrap `model` in a DeepSpeed engine whose forward is its loss.

    By default `model` is a `VideoPoetLM` and the engine's forward returns `(loss, sums, counts)` (`LossModule`,
    with the head's cross-entropy `chunk_size` / `keep_logits` as in `chunked_cross_entropy`);
    other models pass their own `wrapper` module (holding `model`) whose forward computes the loss; every
    parameter must then be used through a submodule's forward (what ZeRO-3 gathers). `lr_lambda(step)`
    multiplies the optimizer's lr after `step` optimizer steps (a `LambdaLR` that the engine steps at each
    gradient-accumulation boundary and saves in its checkpoints).
    """
    _point_deepspeed_at_cpu_if_needed()
    import deepspeed

    if wrapper is None:
        wrapper = LossModule(model, chunk_size=chunk_size, keep_logits=keep_logits)
        if zero_stage(ds_config) == 3:
            deepspeed.zero.register_external_parameter(wrapper, model.lm_head.weight)
    engine, _, _, _ = deepspeed.initialize(
        model=wrapper,
        model_parameters=param_groups(model, weight_decay),
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda),
    )
    return engine


def engine_dtype(engine) -> torch.dtype:
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


# ---------------------------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(engine, ckpt_dir: str, tag: str, client_state: dict) -> None:
    """Collective: every rank calls it. Writes `ckpt_dir/tag/` and updates `ckpt_dir/latest`."""
    engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state)


def latest_tag(ckpt_dir: str) -> str | None:
    path = os.path.join(ckpt_dir, "latest")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        tag = f.read().strip()
    return tag if tag and os.path.isdir(os.path.join(ckpt_dir, tag)) else None


def load_checkpoint(engine, ckpt_dir: str, tag: str | None = None) -> tuple[str, dict] | None:
    """Collective. Restore model, optimizer, LR scheduler from `ckpt_dir` (`latest` unless `tag`); None if empty."""
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(ckpt_dir, tag=tag)
    if path is None:
        raise UserError(
            f"DeepSpeed could not load checkpoint {ckpt_dir}/{tag}; delete it (resume then uses the one "
            "before) or start a new run in another output directory"
        )
    return tag, client_state or {}


def _model_states_file(tag_dir: str) -> str:
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
        path = os.path.join(tag_dir, name)
        if os.path.isfile(path):
            return path
    raise UserError(f"{tag_dir} holds no DeepSpeed model states file (mp_rank_00_model_states.pt)")


def read_client_state(ckpt_dir: str, tag: str | None = None) -> dict:
    """The `client_state` saved with a checkpoint, without a DeepSpeed engine (CPU, one process)."""
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        raise UserError(
            f"no DeepSpeed checkpoint in {ckpt_dir} (no 'latest' file naming a checkpoint folder)"
        )
    sd = torch.load(_model_states_file(os.path.join(ckpt_dir, tag)), map_location="cpu", weights_only=False)
    skip = {"module", "optimizer", "lr_scheduler", "param_shapes", "frozen_param_shapes", "shared_params"}
    return {k: v for k, v in sd.items() if k not in skip and not k.startswith(("ds_", "buffer_names"))}


def unwrap_state_dict(state: dict[str, Tensor], prefix: str = MODULE_PREFIX) -> dict[str, Tensor]:
    """Engine (wrapper module) keys -> the model's own keys."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def consolidated_state_dict(
    ckpt_dir: str, tag: str | None = None, prefix: str = MODULE_PREFIX
) -> dict[str, Tensor]:
    """fp32 weights of the model from a DeepSpeed checkpoint of any ZeRO stage, merged from all ranks' shards.

    `prefix`: the state-dict prefix of the model inside the engine's wrapper (`lm.` for the LM's `LossModule`).
    """
    _point_deepspeed_at_cpu_if_needed()
    tag = tag or latest_tag(ckpt_dir)
    if tag is None:
        raise UserError(
            f"no DeepSpeed checkpoint in {ckpt_dir} (no 'latest' file naming a checkpoint folder)"
        )
    tag_dir = os.path.join(ckpt_dir, tag)
    has_zero = any(n.endswith("optim_states.pt") and "zero" in n for n in os.listdir(tag_dir))
    if has_zero:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag)
    else:  # ZeRO disabled: the module's weights are in the model states file
        state = torch.load(_model_states_file(tag_dir), map_location="cpu", weights_only=False)["module"]
    return {k: v.float() for k, v in unwrap_state_dict(state, prefix).items()}
