"""Exponential moving average of a model's weights (the generator's, for evaluation and release).

    ema = EMA(model, decay=0.999)
    ... optimizer.step(); ema.update(model)
    ema.module.save_pretrained(url)      # the averaged SoundStream, a regular model in eval mode

Floating-point parameters are averaged with `decay` (warmed up as min(decay, (1 + n) / (10 + n)) over the
first updates, so early weights do not linger). Buffers are copied, not averaged: the RVQ codebooks are
already EMAs of their own and must stay consistent with their counts.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        src = dict(model.named_parameters())
        for name, p in self.module.named_parameters():
            q = src[name].detach()
            if p.is_floating_point():
                p.lerp_(q.to(p.dtype), 1 - d)
            else:
                p.copy_(q)
        src_b = dict(model.named_buffers())
        for name, b in self.module.named_buffers():
            b.copy_(src_b[name])
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state.get("decay", self.decay))
