"""SoundStream training losses: reconstruction (multi-scale mel, multi-resolution STFT, optional L1),
commitment, adversarial (hinge or LSGAN) and feature matching. The trainer owns one `SoundStreamLoss`
(which owns the discriminators) next to the `SoundStream` generator:

    crit = SoundStreamLoss(SoundStreamLossConfig(), sample_rate=16000)
    g_loss, g_parts, out = model.loss(wave, crit, step=step)          # = crit.generator_loss(wave, model(wave))
    d_loss, d_parts = crit.discriminator_loss(wave, out.recon, step=step)  # backward into crit.discriminators

Parts are detached scalar tensors (no device sync until the trainer logs them).

`generator_loss` turns off gradients for the discriminator parameters while it runs, so its backward only
fills the generator's `.grad`. `discriminator_loss` detaches the reconstruction.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from videopoet.tokenizers.soundstream.config import SoundStreamLossConfig
from videopoet.tokenizers.soundstream.discriminators import DiscOutput, SoundStreamDiscriminators
from videopoet.tokenizers.soundstream.model import SoundStreamOutput
from videopoet.tokenizers.soundstream.spectral import mel_spectrogram, stft_magnitude

_LOG_EPS = 1e-5


def multiscale_mel_loss(
    wave: Tensor,
    recon: Tensor,
    *,
    windows=(64, 128, 256, 512, 1024, 2048),
    n_mels: int = 64,
    sample_rate: int = 16000,
) -> Tensor:
    """SoundStream's reconstruction loss: sum over windows s of mean over frames t of
    `||S_t - S^_t||_1 + sqrt(s/2) * ||log S_t - log S^_t||_2`, S a magnitude mel spectrogram with window s
    and hop s/4 (mel bins capped at s/4 for small windows)."""
    total = wave.new_zeros((), dtype=torch.float32)
    for s in windows:
        m = min(n_mels, s // 4)
        kw = dict(n_fft=s, hop=s // 4, n_mels=m, sample_rate=sample_rate)
        a, b = mel_spectrogram(wave, **kw), mel_spectrogram(recon, **kw)  # (B, M, T)
        l1 = (a - b).abs().sum(1)  # (B, T)
        d = torch.log(a + _LOG_EPS) - torch.log(b + _LOG_EPS)
        l2 = torch.linalg.vector_norm(d, dim=1)  # (B, T); its gradient at 0 is 0, not NaN
        total = total + (l1 + math.sqrt(s / 2) * l2).mean()
    return total


def multiresolution_stft_loss(wave: Tensor, recon: Tensor, *, ffts=(512, 1024, 2048)) -> Tensor:
    """Mean over FFT sizes n (hop n/4) of spectral convergence ||A - B||_F / ||A||_F + mean |log A - log B|."""
    total = wave.new_zeros((), dtype=torch.float32)
    for n in ffts:
        a, b = stft_magnitude(wave, n_fft=n, hop=n // 4), stft_magnitude(recon, n_fft=n, hop=n // 4)
        sc = torch.linalg.vector_norm(a - b, dim=(1, 2)) / (
            torch.linalg.vector_norm(a, dim=(1, 2)) + _LOG_EPS
        )
        mag = (torch.log(a + _LOG_EPS) - torch.log(b + _LOG_EPS)).abs().mean(dim=(1, 2))
        total = total + (sc + mag).mean()
    return total / max(len(ffts), 1)


def adversarial_g_loss(fake: DiscOutput, kind: str) -> Tensor:
    """Generator side, averaged over sub-discriminators: hinge E[relu(1 - D(G(x)))] or LSGAN E[(D(G(x)) - 1)^2]."""
    if kind == "hinge":
        losses = [F.relu(1 - logits).mean() for logits, _ in fake]
    else:
        losses = [(logits - 1).pow(2).mean() for logits, _ in fake]
    return torch.stack(losses).mean()


def adversarial_d_loss(real: DiscOutput, fake: DiscOutput, kind: str) -> Tensor:
    """Discriminator side: hinge E[relu(1 - D(x))] + E[relu(1 + D(G(x)))] or LSGAN E[(D(x)-1)^2] + E[D(G(x))^2]."""
    losses = []
    for (lr, _), (lf, _) in zip(real, fake):
        if kind == "hinge":
            losses.append(F.relu(1 - lr).mean() + F.relu(1 + lf).mean())
        else:
            losses.append((lr - 1).pow(2).mean() + lf.pow(2).mean())
    return torch.stack(losses).mean()


def feature_matching_loss(real: DiscOutput, fake: DiscOutput) -> Tensor:
    """SoundStream's normalized feature loss: mean over sub-discriminators k and layers l of
    mean|D_k^l(x) - D_k^l(G(x))| / mean|D_k^l(x)| (real activations are targets, no gradient)."""
    losses = []
    for (_, fr), (_, ff) in zip(real, fake):
        for a, b in zip(fr, ff):
            a = a.detach()
            losses.append((a - b).abs().mean() / (a.abs().mean() + 1e-8))
    return torch.stack(losses).mean()


@contextmanager
def _frozen(module: nn.Module):
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


class SoundStreamLoss(nn.Module):
    """Generator and discriminator objectives; holds the discriminators (None without adversarial terms)."""

    def __init__(self, cfg: SoundStreamLossConfig, sample_rate: int = 16000):
        super().__init__()
        self.cfg, self.sample_rate = cfg, sample_rate
        self.discriminators = (
            SoundStreamDiscriminators(
                wave_scales=cfg.wave_disc_scales,
                wave_channels=cfg.wave_disc_channels,
                wave_max_channels=cfg.wave_disc_max_channels,
                stft_channels=cfg.stft_disc_channels,
                stft_n_fft=cfg.stft_disc_n_fft,
                stft_hop=cfg.stft_disc_hop,
            )
            if cfg.uses_discriminators
            else None
        )

    def adversarial_active(self, step: int) -> bool:
        return self.discriminators is not None and step >= self.cfg.adversarial_start_step

    def reconstruction_loss(self, wave: Tensor, recon: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted mel + STFT + L1 terms between `wave` and `recon` (both `(B, S)`)."""
        cfg = self.cfg
        wave, recon = wave.float(), recon.float()
        total = wave.new_zeros(())
        logs: dict[str, Tensor] = {}
        if cfg.mel_weight:
            mel = multiscale_mel_loss(
                wave, recon, windows=cfg.mel_windows, n_mels=cfg.mel_bins, sample_rate=self.sample_rate
            )
            total = total + cfg.mel_weight * mel
            logs["mel"] = _f(mel)
        if cfg.stft_weight:
            st = multiresolution_stft_loss(wave, recon, ffts=cfg.stft_ffts)
            total = total + cfg.stft_weight * st
            logs["stft"] = _f(st)
        if cfg.wave_l1_weight:
            l1 = (wave - recon).abs().mean()
            total = total + cfg.wave_l1_weight * l1
            logs["wave_l1"] = _f(l1)
        return total, logs

    def generator_loss(
        self, wave: Tensor, out: SoundStreamOutput, step: int = 0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total generator loss and its parts (detached scalars, for logging). `wave` is the model's input `(B, S)`."""
        wave = _flat(wave)[:, : out.valid_samples]
        recon = out.recon[:, : out.valid_samples]
        total, logs = self.reconstruction_loss(wave, recon)
        if self.cfg.commitment_weight:
            total = total + self.cfg.commitment_weight * out.commit_loss
        logs["commit"] = _f(out.commit_loss)
        if self.adversarial_active(step):
            with _frozen(self.discriminators):
                fake = self.discriminators(recon.float())
                with torch.no_grad():
                    real = self.discriminators(wave.float())
            adv = adversarial_g_loss(fake, self.cfg.adversarial)
            feat = feature_matching_loss(real, fake)
            total = total + self.cfg.adversarial_weight * adv + self.cfg.feature_weight * feat
            logs["adv_g"], logs["feat"] = _f(adv), _f(feat)
        logs["g_total"] = _f(total)
        return total, logs

    def discriminator_loss(
        self, wave: Tensor, recon: Tensor, step: int = 0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Discriminator loss on real `wave` vs detached `recon` (zero before `adversarial_start_step`)."""
        if not self.adversarial_active(step):
            return wave.new_zeros((), dtype=torch.float32), {}
        n = min(wave.shape[-1], recon.shape[-1])
        real = self.discriminators(_flat(wave)[:, :n].float())
        fake = self.discriminators(recon[:, :n].detach().float())
        loss = adversarial_d_loss(real, fake, self.cfg.adversarial)
        return loss, {"adv_d": _f(loss)}


def _f(t: Tensor) -> Tensor:
    return t.detach()


def _flat(wave: Tensor) -> Tensor:
    return wave[:, 0] if wave.dim() == 3 else wave
