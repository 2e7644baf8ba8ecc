"""SoundStream's two discriminators: multi-scale waveform (MelGAN-style) and single-scale STFT.

Both return, per sub-discriminator, `(logits, features)`: logits `(B, ...)` (one score per time position)
and the list of intermediate activations used by the feature-matching loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from videopoet.tokenizers.soundstream.spectral import stft

DiscOutput = list[tuple[Tensor, list[Tensor]]]


class WaveDiscriminator(nn.Module):
    """One waveform discriminator: Conv(15) -> 4 grouped strided Conv(41, stride 4) -> Conv(5) -> Conv(3) to 1."""

    def __init__(self, channels: int = 16, max_channels: int = 1024, groups=(4, 16, 64, 256)):
        super().__init__()
        layers = [weight_norm(nn.Conv1d(1, channels, 15, padding=7))]
        c = channels
        for g in groups:
            c_out = min(c * 4, max_channels)
            g = math.gcd(g, math.gcd(c, c_out))  # groups must divide both widths
            layers.append(weight_norm(nn.Conv1d(c, c_out, 41, stride=4, padding=20, groups=g)))
            c = c_out
        layers.append(weight_norm(nn.Conv1d(c, c, 5, padding=2)))
        self.layers = nn.ModuleList(layers)
        self.out = weight_norm(nn.Conv1d(c, 1, 3, padding=1))

    def forward(self, wave: Tensor) -> tuple[Tensor, list[Tensor]]:  # (B, S) -> (B, S / 256), features
        x = wave[:, None]
        feats = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            feats.append(x)
        return self.out(x)[:, 0], feats


class MultiScaleWaveDiscriminator(nn.Module):
    """`scales` waveform discriminators on the wave, then on 2x, 4x, ... average-pooled copies."""

    def __init__(self, scales: int = 3, channels: int = 16, max_channels: int = 1024):
        super().__init__()
        self.discs = nn.ModuleList(WaveDiscriminator(channels, max_channels) for _ in range(scales))

    def forward(self, wave: Tensor) -> DiscOutput:
        outs = []
        x = wave.float()
        for i, d in enumerate(self.discs):
            if i:
                x = F.avg_pool1d(x[:, None], 4, stride=2, padding=2, count_include_pad=False)[:, 0]
            outs.append(d(x))
        return outs


class _STFTBlock(nn.Module):
    """Residual unit: Conv(3x3) -> ELU -> Conv((st+2)x(sf+2), stride (st, sf)), plus a strided 1x1 skip."""

    def __init__(self, c_in: int, c_out: int, stride: tuple[int, int]):
        super().__init__()
        st, sf = stride
        self.conv1 = weight_norm(nn.Conv2d(c_in, c_in, 3, padding=1))
        self.conv2 = weight_norm(nn.Conv2d(c_in, c_out, (st + 2, sf + 2), stride=stride, padding=(1, 1)))
        self.skip = weight_norm(nn.Conv2d(c_in, c_out, 1, stride=stride))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(F.elu(self.conv1(x)))
        s = self.skip(x)
        t, f = min(y.shape[-2], s.shape[-2]), min(y.shape[-1], s.shape[-1])
        return F.elu(y[..., :t, :f] + s[..., :t, :f])


class STFTDiscriminator(nn.Module):
    """SoundStream's STFT discriminator on the complex STFT (real and imaginary parts as 2 channels).

    Conv(7x7, C) then 6 residual blocks with (time, frequency) strides (1,2),(2,2),(1,2),(2,2),(1,2),(2,2)
    and widths C, 2C, 4C, 4C, 8C, 8C; a last conv spans all remaining frequency bins, giving one logit per
    (downsampled) time step.
    """

    STRIDES = ((1, 2), (2, 2), (1, 2), (2, 2), (1, 2), (2, 2))
    MULTS = (1, 2, 4, 4, 8, 8)

    def __init__(self, channels: int = 32, n_fft: int = 1024, hop: int = 256):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.conv_in = weight_norm(nn.Conv2d(2, channels, 7, padding=3))
        widths = [channels] + [channels * m for m in self.MULTS]
        self.blocks = nn.ModuleList(
            _STFTBlock(c_in, c_out, s) for c_in, c_out, s in zip(widths[:-1], widths[1:], self.STRIDES)
        )
        with torch.no_grad():  # frequency bins left after the strided blocks
            probe = torch.zeros(1, channels, 8, n_fft // 2 + 1)
            for b in self.blocks:
                probe = b(probe)
        self.conv_out = weight_norm(nn.Conv2d(widths[-1], 1, (1, probe.shape[-1])))

    def forward(self, wave: Tensor) -> tuple[Tensor, list[Tensor]]:  # (B, S) -> (B, frames'), features
        spec = stft(wave, n_fft=self.n_fft, hop=self.hop)  # (B, F, T) complex
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, T, F)
        x = F.elu(self.conv_in(x))
        feats = [x]
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        return self.conv_out(x)[:, 0, :, 0], feats


class SoundStreamDiscriminators(nn.Module):
    """The multi-scale waveform discriminator and the STFT discriminator together."""

    def __init__(
        self,
        *,
        wave_scales: int = 3,
        wave_channels: int = 16,
        wave_max_channels: int = 1024,
        stft_channels: int = 32,
        stft_n_fft: int = 1024,
        stft_hop: int = 256,
    ):
        super().__init__()
        self.wave = (
            MultiScaleWaveDiscriminator(wave_scales, wave_channels, wave_max_channels)
            if wave_scales
            else None
        )
        self.stft = STFTDiscriminator(stft_channels, stft_n_fft, stft_hop)

    def forward(self, wave: Tensor) -> DiscOutput:
        """All sub-discriminators' `(logits, features)` for `wave (B, S)`."""
        outs = self.wave(wave) if self.wave is not None else []
        return outs + [self.stft(wave)]
