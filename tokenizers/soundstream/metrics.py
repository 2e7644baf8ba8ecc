"""Objective audio-codec metrics: mel distance, multi-scale STFT distance, SI-SDR, STOI.

All take a reference and an estimate shaped `(B, samples)` (or `(samples,)`) at the same rate and length
and return one value per batch element `(B,)`:

    mel_distance              mean |log mel(ref) - log mel(est)|, 80 mels, 1024/256 STFT. 0 = identical.
    multiscale_stft_distance  mean over FFT sizes 512/1024/2048 of mean |log|STFT(ref)| - log|STFT(est)||.
    si_sdr                    scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019); higher
                              is better, ~+inf for identical signals, < 0 dB means more error than signal.
    stoi                      short-time objective intelligibility (pystoi), ~1 for identical speech,
                              ~0 for unrelated noise. Needs >= ~1 s of speech.

`evaluate(ref, est)` returns all four batch means as floats.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from videopoet.core.errors import UserError
from videopoet.tokenizers.soundstream.spectral import mel_spectrogram, stft_magnitude

_EPS = 1e-5


def _pair(ref: Tensor, est: Tensor) -> tuple[Tensor, Tensor]:
    ref, est = torch.as_tensor(ref), torch.as_tensor(est)
    if ref.dim() == 1:
        ref, est = ref[None], est[None]
    if ref.shape != est.shape:
        raise UserError(
            f"reference {tuple(ref.shape)} and estimate {tuple(est.shape)} differ in shape; decode with "
            "length=reference.shape[-1] so they align"
        )
    return ref.float(), est.float()


@torch.no_grad()
def mel_distance(ref: Tensor, est: Tensor, sample_rate: int = 16000, n_mels: int = 80) -> Tensor:
    ref, est = _pair(ref, est)
    kw = dict(n_fft=1024, hop=256, n_mels=n_mels, sample_rate=sample_rate)
    a, b = mel_spectrogram(ref, **kw), mel_spectrogram(est, **kw)
    return (torch.log(a + _EPS) - torch.log(b + _EPS)).abs().mean(dim=(1, 2))


@torch.no_grad()
def multiscale_stft_distance(ref: Tensor, est: Tensor, ffts=(512, 1024, 2048)) -> Tensor:
    ref, est = _pair(ref, est)
    out = []
    for n in ffts:
        a, b = stft_magnitude(ref, n_fft=n, hop=n // 4), stft_magnitude(est, n_fft=n, hop=n // 4)
        out.append((torch.log(a + _EPS) - torch.log(b + _EPS)).abs().mean(dim=(1, 2)))
    return torch.stack(out).mean(0)


@torch.no_grad()
def si_sdr(ref: Tensor, est: Tensor, eps: float = 1e-8) -> Tensor:
    """SI-SDR in dB: 10 log10(||a s||^2 / ||a s - e||^2), a = <e, s> / ||s||^2, after removing means."""
    ref, est = _pair(ref, est)
    ref = ref - ref.mean(-1, keepdim=True)
    est = est - est.mean(-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.pow(2).sum(-1, keepdim=True) + eps)
    target = alpha * ref
    noise = est - target
    return 10 * torch.log10((target.pow(2).sum(-1) + eps) / (noise.pow(2).sum(-1) + eps))


def stoi(ref: Tensor, est: Tensor, sample_rate: int = 16000, extended: bool = False) -> Tensor:
    """STOI (or extended STOI) per batch element via pystoi (CPU, numpy)."""
    from pystoi import stoi as _stoi

    ref, est = _pair(ref, est)
    a, b = ref.detach().cpu().double().numpy(), est.detach().cpu().double().numpy()
    vals = [_stoi(x, y, sample_rate, extended=extended) for x, y in zip(a, b)]
    return torch.tensor(np.asarray(vals, dtype=np.float64), dtype=torch.float32)


def evaluate(ref: Tensor, est: Tensor, sample_rate: int = 16000) -> dict[str, float]:
    """Batch means of all four metrics."""
    return {
        "mel_distance": float(mel_distance(ref, est, sample_rate).mean()),
        "stft_distance": float(multiscale_stft_distance(ref, est).mean()),
        "si_sdr": float(si_sdr(ref, est).mean()),
        "stoi": float(stoi(ref, est, sample_rate).mean()),
    }
