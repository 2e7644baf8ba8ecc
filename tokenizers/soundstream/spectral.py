"""Spectral front-ends shared by the SoundStream losses, discriminators and metrics.

Everything here runs in float32 whatever the caller's autocast dtype (STFTs in bf16 are not supported
and lose too much precision for log-magnitude losses). Waves are `(B, samples)`.
"""

from __future__ import annotations

import math
from functools import cache

import torch
from torch import Tensor


def hz_to_mel(f: float | Tensor) -> float | Tensor:
    """HTK mel scale: 2595 * log10(1 + f / 700)."""
    if isinstance(f, Tensor):
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    return 2595.0 * math.log10(1.0 + f / 700.0)


def mel_to_hz(m: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@cache
def _mel_filterbank_cpu(n_fft: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> Tensor:
    freqs = torch.linspace(0.0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (F,)
    edges = mel_to_hz(
        torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    )  # (n_mels + 2,)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    up = (freqs[None] - lo) / (mid - lo)
    down = (hi - freqs[None]) / (hi - mid)
    # Triangles with peak 1 (no area normalization): a filter narrower than one FFT bin at small n_fft is
    # empty (all zeros) and then contributes equal zeros for target and estimate, i.e. nothing.
    return torch.clamp(torch.minimum(up, down), min=0.0).float()  # (n_mels, F)


def mel_filterbank(
    *, n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None, device=None
) -> Tensor:
    """Triangular HTK-mel filters, `(n_mels, n_fft // 2 + 1)`, cached per shape."""
    fb = _mel_filterbank_cpu(n_fft, n_mels, sample_rate, float(f_min), float(f_max or sample_rate / 2))
    return fb.to(device) if device is not None else fb


def stft(wave: Tensor, *, n_fft: int, hop: int, win: int | None = None) -> Tensor:
    """Complex STFT `(B, n_fft // 2 + 1, frames)` with a Hann window, centred frames, zero padding."""
    win = win or n_fft
    window = torch.hann_window(win, device=wave.device, dtype=torch.float32)
    with torch.autocast(device_type=wave.device.type, enabled=False):
        return torch.stft(
            wave.float(),
            n_fft=n_fft,
            hop_length=hop,
            win_length=win,
            window=window,
            center=True,
            pad_mode="constant",  # works for inputs shorter than n_fft / 2 (reflect does not)
            return_complex=True,
        )


def stft_magnitude(wave: Tensor, *, n_fft: int, hop: int, win: int | None = None) -> Tensor:
    """`|STFT|`, `(B, n_fft // 2 + 1, frames)`."""
    return stft(wave, n_fft=n_fft, hop=hop, win=win).abs()


def mel_spectrogram(wave: Tensor, *, n_fft: int, hop: int, n_mels: int, sample_rate: int) -> Tensor:
    """Magnitude mel spectrogram `(B, n_mels, frames)` (filters applied to `|STFT|`, not power)."""
    mag = stft_magnitude(wave, n_fft=n_fft, hop=hop)  # (B, F, frames)
    fb = mel_filterbank(n_fft=n_fft, n_mels=n_mels, sample_rate=sample_rate, device=wave.device)
    return torch.einsum("mf,bft->bmt", fb, mag)
