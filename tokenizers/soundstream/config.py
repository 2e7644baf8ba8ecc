"""Configs of the SoundStream audio tokenizer and of its training losses, with named sizes.

`SoundStreamConfig` is saved as `config.json` beside `model.safetensors` (`SoundStream.save_pretrained`)
and is all that is needed to rebuild the network; loading is strict (`core.config.from_dict`).
`SoundStreamLossConfig` belongs to the trainer: the discriminators it describes are not part of the
tokenizer checkpoint.

Frame arithmetic (VideoPoet: 16 kHz mono, 4 levels x 1024 codes):
    hop = prod(strides) = 2 * 4 * 5 * 8 = 320 samples -> 50 frames per second
    frames = floor(samples / 320)            1 s = 16000 -> 50;  2.125 s = 34000 -> 106
The encoder reads the first `frames * 320` samples; a tail shorter than one hop (80 samples = 5 ms for a
2.125 s window) is not encoded, exactly like a streaming codec that only emits complete frames. VideoPoet
pairs 17 video frames at 8 fps (2.125 s) with 106 audio frames, i.e. this floor. `decode(codes)` returns
`frames * 320` samples; `decode(codes, length=n)` pads that tail with zeros (or crops) to exactly n samples,
so `decode(encode(x), length=x.shape[-1])` has x's shape.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from videopoet.core.config import ConfigError, check


@dataclass(kw_only=True)
class SoundStreamConfig:
    """SoundStream: causal 1D conv encoder (strides 2,4,5,8), residual VQ, mirrored decoder."""

    sample_rate: int = 16000
    """Audio sample rate in Hz; inputs must already be at this rate and mono."""
    channels: int = 24
    """C: width of the first encoder conv and the last decoder conv; stage i is `channels * channel_mults[i]` wide."""
    channel_mults: tuple[int, ...] = (2, 4, 8, 16)
    """Output width multiplier of each encoder stage (mirrored in the decoder); one entry per stride."""
    strides: tuple[int, ...] = (2, 4, 5, 8)
    """Downsampling factor of each encoder stage; their product is the hop (320 samples = 20 ms at 16 kHz)."""
    dilations: tuple[int, ...] = (1, 3, 9)
    """Dilations of the residual units in each stage (one unit per entry)."""
    kernel_size: int = 7
    """Kernel of the residual units' dilated convolutions and of the first/last convolutions."""
    causal: bool = True
    """Pad convolutions on the left only (streamable, as in SoundStream); False pads both sides."""
    weight_norm: bool = True
    """Weight-normalize the convolutions (stabilizes adversarial training)."""
    latent_dim: int = 64
    """D: dimension of the encoder output and of every codeword."""
    num_levels: int = 4
    """L: residual quantizer levels, i.e. tokens per audio frame (VideoPoet: 4)."""
    codebook_size: int = 1024
    """Codes per level (VideoPoet: 1024, so 4 levels give a 4096-token audio vocabulary)."""
    ema_decay: float = 0.99
    """Decay of the codebooks' exponential moving averages."""
    kmeans_iters: int = 10
    """Lloyd iterations of the k-means that initializes each codebook on the first training batch."""
    dead_code_steps: int = 200
    """A code assigned no vector for this many consecutive training steps is restarted on a batch vector."""
    quantizer_dropout: float = 0.5
    """Probability that a training example uses only the first n ~ U{1..L} levels (bitrate scalability). SoundStream drops on every example (1.0); 0.5, as in DAC, costs less full-rate quality."""

    def __post_init__(self) -> None:
        check(self.sample_rate > 0, "sample_rate", self.sample_rate, "> 0")
        check(self.channels > 0, "channels", self.channels, "> 0")
        check(
            len(self.strides) > 0 and all(s > 0 for s in self.strides),
            "strides",
            self.strides,
            "a non-empty list of positive integers",
        )
        check(
            len(self.channel_mults) == len(self.strides) and all(m > 0 for m in self.channel_mults),
            "channel_mults",
            self.channel_mults,
            f"{len(self.strides)} positive integers (one per stride)",
        )
        check(
            len(self.dilations) > 0 and all(d > 0 for d in self.dilations),
            "dilations",
            self.dilations,
            "positive integers",
        )
        check(
            self.kernel_size > 0 and self.kernel_size % 2 == 1,
            "kernel_size",
            self.kernel_size,
            "an odd integer > 0",
        )
        check(self.latent_dim > 0, "latent_dim", self.latent_dim, "> 0")
        check(self.num_levels > 0, "num_levels", self.num_levels, "> 0")
        check(self.codebook_size > 1, "codebook_size", self.codebook_size, "> 1")
        check(0 < self.ema_decay < 1, "ema_decay", self.ema_decay, "in (0, 1)")
        check(self.kmeans_iters >= 1, "kmeans_iters", self.kmeans_iters, ">= 1")
        check(self.dead_code_steps >= 1, "dead_code_steps", self.dead_code_steps, ">= 1")
        check(0 <= self.quantizer_dropout <= 1, "quantizer_dropout", self.quantizer_dropout, "in [0, 1]")

    @property
    def hop_length(self) -> int:
        """Samples per latent frame (320 by default)."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Latent frames per second (50 by default)."""
        return self.sample_rate / self.hop_length

    @classmethod
    def from_name(cls, name: str, **overrides) -> SoundStreamConfig:
        """A named size (`debug`, `small`, `base`) with optional field overrides."""
        if name not in SOUNDSTREAM_SIZES:
            raise ConfigError(
                f"unknown SoundStream size {name!r}; known sizes: {', '.join(SOUNDSTREAM_SIZES)}"
            )
        return dataclasses.replace(cls(**SOUNDSTREAM_SIZES[name]), **overrides)


SOUNDSTREAM_SIZES: dict[str, dict] = {
    # CPU tests and CI: 0.62M parameters, 2.8 MB checkpoint; overfits a 1 s clip in ~100 CPU steps.
    "debug": dict(channels=8, latent_dim=32, codebook_size=256, kmeans_iters=5),
    # The defaults: 5.4M parameters, 23.8 MB checkpoint (codebooks and their EMA state included).
    "small": dict(),
    # The SoundStream paper's width (C = 32): 10.5M parameters, 50 MB checkpoint.
    "base": dict(channels=32, latent_dim=256),
}


@dataclass(kw_only=True)
class SoundStreamLossConfig:
    """Losses of SoundStream training and the discriminators they use.

    Generator loss = mel_weight * multi-scale mel + stft_weight * multi-scale STFT + wave_l1_weight * L1
    + commitment_weight * commitment + (from `adversarial_start_step` on) adversarial_weight * adversarial
    + feature_weight * feature matching. Adversarial losses are hinge by default, as in SoundStream:
    D minimizes E[relu(1 - D(x))] + E[relu(1 + D(G(x)))], G minimizes E[relu(1 - D(G(x)))].
    """

    mel_windows: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    """Window lengths s of the multi-scale mel loss (hop s/4); SoundStream uses 2^6..2^11."""
    mel_bins: int = 64
    """Mel bins per scale, capped at s/4 for the smallest windows (their FFT has only s/2+1 bins)."""
    mel_weight: float = 1.0
    """lambda_rec: weight of sum_s mean_t(||S_t - S^_t||_1 + sqrt(s/2) ||log S_t - log S^_t||_2)."""
    stft_ffts: tuple[int, ...] = (512, 1024, 2048)
    """FFT sizes of the multi-resolution STFT loss (hop n/4): spectral convergence + L1 of log magnitudes."""
    stft_weight: float = 1.0
    """Weight of the multi-resolution STFT loss (0 turns it off)."""
    wave_l1_weight: float = 0.0
    """Weight of a plain waveform L1 term (not in SoundStream; EnCodec uses 0.1). Aligns phase early on."""
    commitment_weight: float = 1.0
    """Weight of the RVQ commitment loss ||z - sg(q)||^2 (the EMA codebooks need no codebook loss)."""
    adversarial: Literal["hinge", "lsgan"] = "hinge"
    """GAN objective: "hinge" (SoundStream) or "lsgan" (least squares, MelGAN/HiFi-GAN)."""
    adversarial_weight: float = 1.0
    """lambda_adv (SoundStream: 1). 0 with feature_weight 0 trains without discriminators."""
    feature_weight: float = 100.0
    """lambda_feat: weight of the normalized L1 feature-matching loss on discriminator activations (SoundStream: 100)."""
    adversarial_start_step: int = 0
    """Generator steps before the adversarial and feature terms switch on (reconstruction-only warm-up)."""
    wave_disc_scales: int = 3
    """Waveform discriminators: one at the input rate and one per further 2x average-pooled copy."""
    wave_disc_channels: int = 16
    """Width of the first conv of each waveform discriminator; each of its 4 strided convs multiplies it by 4."""
    wave_disc_max_channels: int = 1024
    """Cap on the waveform discriminators' width."""
    stft_disc_channels: int = 32
    """Width C of the STFT discriminator (its blocks have C, 2C, 4C, 4C, 8C, 8C channels)."""
    stft_disc_n_fft: int = 1024
    """Window (= FFT size) of the STFT discriminator; SoundStream: 1024."""
    stft_disc_hop: int = 256
    """Hop of the STFT discriminator; SoundStream: 256."""

    def __post_init__(self) -> None:
        check(
            len(self.mel_windows) > 0 and all(w >= 16 for w in self.mel_windows),
            "mel_windows",
            self.mel_windows,
            "window lengths >= 16",
        )
        check(self.mel_bins > 0, "mel_bins", self.mel_bins, "> 0")
        check(all(n >= 16 for n in self.stft_ffts), "stft_ffts", self.stft_ffts, "FFT sizes >= 16")
        for key in (
            "mel_weight",
            "stft_weight",
            "wave_l1_weight",
            "commitment_weight",
            "adversarial_weight",
            "feature_weight",
        ):
            check(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        check(self.adversarial_start_step >= 0, "adversarial_start_step", self.adversarial_start_step, ">= 0")
        check(self.wave_disc_scales >= 0, "wave_disc_scales", self.wave_disc_scales, ">= 0")
        check(self.wave_disc_channels > 0, "wave_disc_channels", self.wave_disc_channels, "> 0")
        check(
            self.wave_disc_max_channels >= self.wave_disc_channels,
            "wave_disc_max_channels",
            self.wave_disc_max_channels,
            ">= wave_disc_channels",
        )
        check(self.stft_disc_channels > 0, "stft_disc_channels", self.stft_disc_channels, "> 0")
        check(self.stft_disc_n_fft >= 64, "stft_disc_n_fft", self.stft_disc_n_fft, ">= 64")
        check(
            0 < self.stft_disc_hop <= self.stft_disc_n_fft,
            "stft_disc_hop",
            self.stft_disc_hop,
            "in (0, stft_disc_n_fft]",
        )

    @property
    def uses_discriminators(self) -> bool:
        return self.adversarial_weight > 0 or self.feature_weight > 0
