"""Configs of the MAGVIT-v2 tokenizer and its discriminator, with named sizes (`MagvitConfig.from_name`).

The config is saved as `config.json` beside `model.safetensors` (see `MagvitV2.save_pretrained`) and is
enough to rebuild the network; loading is strict (`core.config.from_dict`), so a checkpoint written by a
different code version fails with the offending key named rather than loading silently wrong.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from videopoet.core.config import ConfigError, check, from_dict


@dataclass(kw_only=True)
class DiscriminatorConfig:
    """3D StyleGAN-style discriminator with blur-pooled (anti-aliased) downsampling, and its losses."""

    channels: int = 64
    """Width of the first convolution; block i has `channels * channel_mults[i]` output channels."""
    channel_mults: tuple[int, ...] = (2, 4, 4, 4, 4)
    """One residual down-block per entry; each halves H and W (and T while T > 1)."""
    r1_weight: float = 10.0
    """Weight of the R1 penalty E[||grad_x D(x)||^2] on real clips (gamma/2 in Mescheder et al.'s notation)."""
    lecam_weight: float = 0.001
    """Weight of the LeCAM regularizer that pulls D's logits towards EMAs of the other side's logits."""
    lecam_ema_decay: float = 0.999
    """Decay of the exponential moving averages of mean real and fake logits used by LeCAM."""

    def __post_init__(self) -> None:
        check(self.channels > 0, "discriminator.channels", self.channels, "> 0")
        check(
            len(self.channel_mults) > 0 and all(m > 0 for m in self.channel_mults),
            "discriminator.channel_mults",
            self.channel_mults,
            "a non-empty list of positive integers",
        )
        check(self.r1_weight >= 0, "discriminator.r1_weight", self.r1_weight, ">= 0")
        check(self.lecam_weight >= 0, "discriminator.lecam_weight", self.lecam_weight, ">= 0")
        check(
            0 <= self.lecam_ema_decay < 1, "discriminator.lecam_ema_decay", self.lecam_ema_decay, "in [0, 1)"
        )


@dataclass(kw_only=True)
class MagvitConfig:
    """MAGVIT-v2 video/image tokenizer: causal 3D CNN encoder, lookup-free quantizer, 3D CNN decoder.

    A clip of `1 + 4n` frames of `H x W` maps to `(1 + n) x H/8 x W/8` tokens with the defaults; frame 0 is
    encoded on its own, so an image is a 1-frame video with tokens in the same vocabulary.
    """

    in_channels: int = 3
    """Pixel channels (RGB)."""
    channels: int = 128
    """Base width: stage i of the encoder (and the mirrored decoder stage) has `channels * channel_mults[i]` channels."""
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    """Channel multiplier per resolution stage. Every stage but the last ends in a 2x spatial downsample."""
    time_downsample: tuple[bool, ...] = (False, True, True)
    """Per downsample (one fewer than stages): whether it also halves time. MAGVIT-v2 only strides time in the last two, giving 4x."""
    num_res_blocks: int = 4
    """Residual blocks per stage, in the encoder and the decoder (plus as many in the middle of each)."""
    norm_groups: int = 32
    """Groups of the per-frame group norms; must divide every stage's channel count."""
    upsample_kernel: int = 3
    """Kernel of the convolution before each depth-to-space upsample (3 as in the paper; 1 saves parameters)."""

    codebook_bits: int = 18
    """K: bits per token; the vocabulary is 2^K (2^18 = 262,144 in VideoPoet)."""
    codebook_scale: float = 1.0
    """Quantized values are +-codebook_scale; the latent is RMS-normalized to this scale before the sign."""
    entropy_group_bits: int = 9
    """The entropy loss splits the K bits into groups of this many bits (2^g-way softmaxes) and sums the group entropies. Equal to K gives the exact loss."""
    inv_temperature: float = 100.0
    """Inverse temperature of the soft code assignment in the entropy loss: logits = 2 <z, c> * inv_temperature."""

    recon_loss: Literal["l1", "l2"] = "l2"
    """Pixel reconstruction loss: mean squared error ("l2") or mean absolute error ("l1")."""
    commitment_weight: float = 0.25
    """Weight of the commitment loss ||z - sg(q)||^2 (the encoder is pulled towards its codes)."""
    entropy_weight: float = 0.1
    """Weight of the LFQ entropy loss (mean per-token entropy minus batch codebook entropy) after annealing."""
    entropy_anneal_steps: int = 2000
    """Steps over which the entropy weight decays linearly from `entropy_anneal_factor * entropy_weight` to `entropy_weight`."""
    entropy_anneal_factor: float = 3.0
    """Multiplier of the entropy weight at step 0 (1 disables annealing)."""
    adversarial_weight: float = 0.1
    """Weight of the generator's non-saturating GAN loss when a discriminator is passed to `loss`."""
    perceptual_weight: float = 0.1
    """Weight of the perceptual loss when a perceptual callable is passed to `loss` (none by default)."""

    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    """The discriminator trained alongside (not part of the tokenizer's weights)."""

    def __post_init__(self) -> None:
        check(self.in_channels > 0, "in_channels", self.in_channels, "> 0")
        check(self.channels > 0, "channels", self.channels, "> 0")
        check(
            len(self.channel_mults) > 0 and all(m > 0 for m in self.channel_mults),
            "channel_mults",
            self.channel_mults,
            "a non-empty list of positive integers",
        )
        check(
            len(self.time_downsample) == len(self.channel_mults) - 1,
            "time_downsample",
            self.time_downsample,
            f"{len(self.channel_mults) - 1} booleans (one per downsample, i.e. len(channel_mults) - 1)",
        )
        check(self.num_res_blocks >= 1, "num_res_blocks", self.num_res_blocks, ">= 1")
        widths = sorted({self.channels * m for m in self.channel_mults})
        check(
            self.norm_groups > 0 and all(w % self.norm_groups == 0 for w in widths),
            "norm_groups",
            self.norm_groups,
            f"a positive divisor of every stage width {widths}",
        )
        check(self.upsample_kernel in (1, 3), "upsample_kernel", self.upsample_kernel, "1 or 3")
        check(1 <= self.codebook_bits <= 30, "codebook_bits", self.codebook_bits, "in [1, 30]")
        check(self.codebook_scale > 0, "codebook_scale", self.codebook_scale, "> 0")
        # A group of g bits materializes an (N tokens x 2^g) matrix; 2^12 keeps that affordable.
        check(
            1 <= self.entropy_group_bits <= min(12, self.codebook_bits),
            "entropy_group_bits",
            self.entropy_group_bits,
            f"in [1, min(12, codebook_bits={self.codebook_bits})]",
        )
        check(self.inv_temperature > 0, "inv_temperature", self.inv_temperature, "> 0")
        for key in ("commitment_weight", "entropy_weight", "adversarial_weight", "perceptual_weight"):
            check(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        check(self.entropy_anneal_steps >= 0, "entropy_anneal_steps", self.entropy_anneal_steps, ">= 0")
        check(self.entropy_anneal_factor >= 1, "entropy_anneal_factor", self.entropy_anneal_factor, ">= 1")

    @property
    def spatial_factor(self) -> int:
        """Pixels per token along H and along W."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def time_factor(self) -> int:
        """Frames per latent frame after the first (the first frame has a latent frame of its own)."""
        return 2 ** sum(self.time_downsample)

    @property
    def vocab_size(self) -> int:
        return 2**self.codebook_bits

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(T', H', W') of the tokens of a `frames x height x width` clip (no validation, see `check_input_shape`)."""
        return (
            1 + (frames - 1) // self.time_factor,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )

    def entropy_weight_at(self, step: int) -> float:
        """The annealed entropy-loss weight: `factor * w` at step 0, linearly down to `w` at `entropy_anneal_steps`."""
        return annealed_weight(
            step, self.entropy_weight, self.entropy_anneal_steps, self.entropy_anneal_factor
        )

    @classmethod
    def from_name(cls, name: str, **overrides) -> MagvitConfig:
        """A named size ("debug", "small", "base"), optionally with some fields overridden."""
        if name not in SIZES:
            raise ConfigError(f"unknown MAGVIT-v2 size {name!r}; known sizes: {', '.join(SIZES)}")
        raw = dataclasses.asdict(SIZES[name]) | overrides
        return from_dict(cls, raw)


def annealed_weight(step: int, weight: float, anneal_steps: int, factor: float) -> float:
    """Linear decay from `factor * weight` at step 0 to `weight` at `anneal_steps`, constant after."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return weight
    start = factor * weight
    return start + (weight - start) * max(step, 0) / anneal_steps


SIZES: dict[str, MagvitConfig] = {
    # Tiny, for CPU tests: 17x128x128 -> 5x16x16 still, 2^10 codes, exact (one-group) entropy loss.
    "debug": MagvitConfig(
        channels=8,
        channel_mults=(1, 2, 2, 4),
        num_res_blocks=1,
        norm_groups=4,
        codebook_bits=10,
        entropy_group_bits=10,
        discriminator=DiscriminatorConfig(channels=8, channel_mults=(2, 4)),
    ),
    # ~11M generator parameters (~22 MB in bf16); ~60 clips/s per H100 for a compiled G+D step at 17x128x128.
    "small": MagvitConfig(
        channels=32,
        channel_mults=(1, 2, 3, 4),
        num_res_blocks=2,
        norm_groups=16,
        upsample_kernel=1,
        discriminator=DiscriminatorConfig(channels=32, channel_mults=(2, 4, 4, 4, 4)),
    ),
    # Close to the paper's video tokenizer (128 filters, (1, 2, 2, 4), 4 residual blocks per stage).
    "base": MagvitConfig(),
}
