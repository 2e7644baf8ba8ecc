"""MAGVIT-v2 video/image tokenizer (Yu et al. 2023, "Language Model Beats Diffusion"): causal 3D CNN
encoder -> lookup-free quantizer -> 3D CNN decoder with adaptive group norms and depth-to-space upsampling.

    from videopoet.tokenizers.magvit2 import MagvitConfig, MagvitV2
    model = MagvitV2(MagvitConfig.from_name("small")).eval()
    codes = model.encode(pixels)              # (B, 3, 17, 128, 128) in [-1, 1] -> (B, 5, 16, 16) int64
    video = model.decode(codes)               # -> (B, 3, 17, 128, 128) in [-1, 1]
    total, parts = model.loss(pixels, step=step)            # generator reconstruction + LFQ losses
    model.save_pretrained("out/tok"); MagvitV2.from_pretrained("gs://bucket/tok")

Shapes: T = 1 + 4n frames -> 1 + n latent frames (frame 0 is encoded on its own, so an image is a
1-frame video with tokens from the same vocabulary); H, W -> H/8, W/8. Token index bit i is code channel i
(LSB first, see `lfq.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from videopoet.core.config import ConfigError, from_dict, to_dict
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_bytes, atomic_write_text, join
from videopoet.tokenizers.magvit2.config import MagvitConfig
from videopoet.tokenizers.magvit2.discriminator import generator_adversarial_loss
from videopoet.tokenizers.magvit2.layers import (
    CausalConv3d,
    DepthToSpaceUpsample,
    Downsample,
    FrameGroupNorm,
    ResBlock,
)
from videopoet.tokenizers.magvit2.lfq import LFQ

PerceptualLoss = Callable[[Tensor, Tensor], Tensor]
"""Any callable (function or nn.Module) taking (recon, target) `(B, 3, T, H, W)` in [-1, 1] and returning a
scalar, e.g. `per_frame(lpips_module)`. Kept out of the tokenizer's weights: pass it to `loss`."""

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "videopoet.magvit2.v1"


class Encoder(nn.Module):
    """Pixels (B, 3, T, H, W) -> pre-quantization latent (B, K, T', H', W'). Causal in time."""

    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mults]
        g = cfg.norm_groups
        self.conv_in = CausalConv3d(cfg.in_channels, widths[0], 3)
        self.stages = nn.ModuleList()
        prev = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(prev, width, g))
                prev = width
            if i < len(widths) - 1:
                blocks.append(Downsample(width, time=cfg.time_downsample[i]))
            self.stages.append(nn.Sequential(*blocks))
        self.mid = nn.Sequential(*(ResBlock(prev, prev, g) for _ in range(cfg.num_res_blocks)))
        self.norm_out = FrameGroupNorm(prev, g)
        self.conv_out = CausalConv3d(prev, cfg.codebook_bits, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.stages:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Quantized latent (B, K, T', H', W') -> pixels (B, 3, T, H, W). Every norm is an adaptive group norm
    conditioned on the quantized latent; upsampling is depth-to-space. Causal in time as well."""

    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mults]
        g, k = cfg.norm_groups, cfg.codebook_bits
        top = widths[-1]
        self.conv_in = CausalConv3d(k, top, 3)
        self.mid = nn.ModuleList(ResBlock(top, top, g, cond_channels=k) for _ in range(cfg.num_res_blocks))
        self.stages = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        prev = top
        for i in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(prev, widths[i], g, cond_channels=k))
                prev = widths[i]
            self.stages.append(blocks)
            if i > 0:  # mirrors encoder downsample i - 1
                self.upsamples.append(
                    DepthToSpaceUpsample(
                        prev, prev, time=cfg.time_downsample[i - 1], kernel_size=cfg.upsample_kernel
                    )
                )
        self.norm_out = FrameGroupNorm(prev, g)
        self.conv_out = CausalConv3d(prev, cfg.in_channels, 3)

    def forward(self, q: Tensor) -> Tensor:
        h = self.conv_in(q)
        for block in self.mid:
            h = block(h, q)
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                h = block(h, q)
            if i < len(self.upsamples):
                h = self.upsamples[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))


@dataclass
class Reconstruction:
    """What one generator pass produces; `MagvitV2.loss_terms` turns it into losses."""

    recon: Tensor
    """(B, 3, T, H, W) decoder output (not clamped), differentiable."""
    codes: Tensor
    """(B, T', H', W') int64 tokens."""
    normalized: Tensor
    """(B, K, T', H', W') fp32 RMS-normalized latent (the LFQ losses' input)."""


class MagvitV2(nn.Module):
    """The tokenizer. `encode`, `decode`, `loss` are separate methods; see the module docstring."""

    def __init__(self, cfg: MagvitConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = LFQ(
            cfg.codebook_bits,
            scale=cfg.codebook_scale,
            group_bits=cfg.entropy_group_bits,
            inv_temperature=cfg.inv_temperature,
        )
        self.decoder = Decoder(cfg)
        self._channels_last = False

    # ---- properties and shape checks -------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def vocab_size(self) -> int:
        return self.cfg.vocab_size

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', H', W') of the tokens of a `frames x height x width` clip (validated)."""
        self.check_input_shape((1, self.cfg.in_channels, frames, height, width))
        return self.cfg.latent_shape(frames, height, width)

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        cfg = self.cfg
        tf, sf = cfg.time_factor, cfg.spatial_factor
        if len(shape) != 5 or shape[1] != cfg.in_channels:
            raise UserError(
                f"MAGVIT-v2 expects pixels of shape (B, {cfg.in_channels}, T, H, W), got {tuple(shape)}; "
                "pass an image as a 1-frame video: x[:, :, None]"
            )
        t, h, w = shape[2:]
        if (t - 1) % tf or h % sf or w % sf or min(h, w) == 0:
            raise UserError(
                f"MAGVIT-v2 cannot tokenize a clip of {t}x{h}x{w} (T x H x W): it needs T = 1 + {tf}n frames "
                f"and H, W multiples of {sf}; crop or pad the clip, e.g. to {1 + (max(t, 1) - 1) // tf * tf}"
                f"x{h // sf * sf}x{w // sf * sf}"
            )

    def _prepare(self, pixels: Tensor) -> Tensor:
        self.check_input_shape(tuple(pixels.shape))
        if not pixels.is_floating_point():
            raise UserError(f"pixels must be a float tensor in [-1, 1], got dtype {pixels.dtype}")
        pixels = pixels.to(self.device, self.dtype)  # a bf16 model takes bf16 pixels; autocast handles fp32
        if self._channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last_3d)
        return pixels

    def channels_last_(self, enabled: bool = True) -> MagvitV2:
        """Keep weights and inputs in channels_last_3d (often faster for bf16 conv3d on GPUs). Same results."""
        fmt = torch.channels_last_3d if enabled else torch.contiguous_format
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)
        self._channels_last = enabled
        return self

    # ---- internals: latents and quantization ------------------------------------------------------

    def encode_latents(self, pixels: Tensor) -> Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> pre-quantization latent (B, K, T', H', W'), differentiable."""
        return self.encoder(self._prepare(pixels))

    def quantize(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """Latent (B, K, T', H', W') -> (quantized +-scale fp32 with straight-through grads, codes int64)."""
        out = self.quantizer(latents)
        return out.quantized, out.indices

    def codes_to_latents(self, codes: Tensor) -> Tensor:
        """Tokens (B, T', H', W') -> quantized latent (B, K, T', H', W') (fp32), validated."""
        if codes.ndim != 4 or codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise UserError(
                f"codes must be an integer tensor (B, T', H', W'), got {codes.dtype} {tuple(codes.shape)}"
            )
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.vocab_size:
            raise UserError(
                f"codes must lie in [0, {self.vocab_size}) for a {self.cfg.codebook_bits}-bit MAGVIT-v2, "
                f"got values in [{lo}, {hi}]; were they made by a tokenizer with another vocabulary?"
            )
        return self.quantizer.indices_to_codes(codes.to(self.device))

    def decode_latents(self, quantized: Tensor) -> Tensor:
        """Quantized latent (B, K, T', H', W') -> pixels (B, 3, T, H, W), differentiable, not clamped."""
        quantized = quantized.to(self.dtype)
        if self._channels_last:
            quantized = quantized.contiguous(memory_format=torch.channels_last_3d)
        return self.decoder(quantized)

    # ---- the public codec --------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> codes (B, T', H', W') int64 in [0, 2^K)."""
        return self.quantize(self.encode_latents(pixels))[1]

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, T', H', W') -> pixels (B, 3, 1 + 4(T'-1), 8H', 8W') (default factors), clamped to [-1, 1], fp32."""
        return self.decode_latents(self.codes_to_latents(codes)).float().clamp(-1, 1)

    # ---- training ----------------------------------------------------------------------------------

    def reconstruct(self, pixels: Tensor) -> Reconstruction:
        """One differentiable encode -> quantize -> decode pass (for `loss_terms` and a GAN step)."""
        out = self.quantizer(self.encode_latents(pixels))
        return Reconstruction(
            recon=self.decode_latents(out.quantized), codes=out.indices, normalized=out.normalized
        )

    def loss_terms(
        self,
        pixels: Tensor,
        rec: Reconstruction,
        *,
        step: int = 0,
        discriminator: nn.Module | None = None,
        perceptual: PerceptualLoss | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Generator loss of a reconstruction: reconstruction + commitment + annealed entropy
        (+ adversarial with `discriminator`, + perceptual with `perceptual`). Parts are detached scalars.

        With a discriminator, gradients also reach its parameters: step only the generator's optimizer
        (or freeze D) for this loss.
        """
        cfg = self.cfg
        target = pixels.to(rec.recon.device).float()
        recon = rec.recon.float()
        if cfg.recon_loss == "l2":
            recon_loss = F.mse_loss(recon, target)
        else:
            recon_loss = F.l1_loss(recon, target)
        lfq = self.quantizer.losses(rec.normalized)
        entropy_weight = cfg.entropy_weight_at(step)
        total = recon_loss + cfg.commitment_weight * lfq["commitment"] + entropy_weight * lfq["entropy"]
        parts = {
            "recon": recon_loss.detach(),
            "commitment": lfq["commitment"].detach(),
            "entropy": lfq["entropy"].detach(),
            "per_token_entropy": lfq["per_token_entropy"],
            "codebook_entropy": lfq["codebook_entropy"],
            "entropy_weight": torch.tensor(entropy_weight),
        }
        if perceptual is not None and cfg.perceptual_weight > 0:
            p = perceptual(rec.recon, pixels.to(rec.recon.device)).float()
            total = total + cfg.perceptual_weight * p
            parts["perceptual"] = p.detach()
        if discriminator is not None and cfg.adversarial_weight > 0:
            adv = generator_adversarial_loss(discriminator(rec.recon))
            total = total + cfg.adversarial_weight * adv
            parts["g_adversarial"] = adv.detach()
        with torch.no_grad():
            mse = F.mse_loss(recon.clamp(-1, 1), target)
            parts["psnr"] = 10 * torch.log10(4.0 / mse.clamp_min(1e-10))  # peak-to-peak range of [-1, 1] is 2
        parts["total"] = total.detach()
        return total, parts

    def loss(
        self,
        pixels: Tensor,
        *,
        step: int = 0,
        discriminator: nn.Module | None = None,
        perceptual: PerceptualLoss | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """`reconstruct` + `loss_terms`: pixels (B, 3, T, H, W) in [-1, 1] -> (total, parts)."""
        return self.loss_terms(
            pixels, self.reconstruct(pixels), step=step, discriminator=discriminator, perceptual=perceptual
        )

    # ---- checkpoints -------------------------------------------------------------------------------

    def save_pretrained(self, url: str, *, dtype: torch.dtype | None = None) -> None:
        """Write `config.json` and `model.safetensors` (generator weights, optionally cast to `dtype`,
        e.g. torch.bfloat16 to halve the size) under the local path or fsspec URL `url`, atomically."""
        state = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().contiguous().cpu()
            for k, v in self.state_dict().items()
        }
        config_json = json.dumps(to_dict(self.cfg), indent=2)
        meta = {"format": FORMAT, "config": config_json}
        atomic_write_bytes(join(url, WEIGHTS_NAME), save_safetensors(state, metadata=meta))
        atomic_write_text(join(url, CONFIG_NAME), config_json + "\n")

    @classmethod
    def from_pretrained(
        cls, url: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> MagvitV2:
        """Load a tokenizer saved by `save_pretrained` from a local path or fsspec URL; returns it in eval mode."""
        import fsspec

        cfg_url, weights_url = join(url, CONFIG_NAME), join(url, WEIGHTS_NAME)
        try:
            with fsspec.open(cfg_url, "r", encoding="utf-8") as f:
                raw = json.load(f)
            with fsspec.open(weights_url, "rb") as f:
                blob = f.read()
        except FileNotFoundError as e:
            raise UserError(
                f"no MAGVIT-v2 checkpoint at {url}: {e.filename or e} is missing; "
                f"a checkpoint is a folder with {CONFIG_NAME} and {WEIGHTS_NAME} written by save_pretrained"
            ) from None
        except json.JSONDecodeError as e:
            raise UserError(f"{cfg_url} is not valid JSON ({e}); re-save the checkpoint") from None
        try:
            cfg = from_dict(MagvitConfig, raw)
        except ConfigError as e:
            raise UserError(f"{cfg_url}: {e}") from None
        model = cls(cfg)
        state = load_safetensors(blob)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(
                f"{weights_url} does not match its {CONFIG_NAME}: missing {sorted(missing)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}; was it written by another version of this code?"
            )
        model = model.to(device=device)
        if dtype is not None:
            model = model.to(dtype=dtype)
        return model.eval()


def per_frame(image_loss: Callable[[Tensor, Tensor], Tensor]) -> PerceptualLoss:
    """Adapt an image perceptual loss `(N, 3, H, W), (N, 3, H, W) -> scalar` to clips by folding time into batch."""

    def clip_loss(recon: Tensor, target: Tensor) -> Tensor:
        fold = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731  (B, C, T, H, W) -> (B*T, C, H, W)
        return image_loss(fold(recon), fold(target)).mean()

    return clip_loss


__all__ = ["MagvitV2", "Encoder", "Decoder", "Reconstruction", "PerceptualLoss", "per_frame"]
