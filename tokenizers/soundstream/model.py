"""SoundStream audio tokenizer: 16 kHz mono wave <-> residual-VQ codes, 50 frames per second.

    model = SoundStream(SoundStreamConfig.from_name("small"))      # or SoundStream.from_pretrained(url)
    codes = model.encode(wave)                 # (B, samples) or (B, 1, samples) -> (B, 4, samples // 320) long
    wave_hat = model.decode(codes, length=wave.shape[-1])          # (B, samples)
    crit = SoundStreamLoss(SoundStreamLossConfig())                 # losses.py; owns the discriminators
    loss, parts, out = model.loss(wave, crit, step=step)           # training forward + generator loss
    d_loss, d_parts = crit.discriminator_loss(wave, out.recon, step=step)

Architecture (Zeghidour et al. 2021): Conv(7) -> 4 encoder blocks [3 residual units with dilations 1, 3, 9,
then a strided Conv(2s)] -> Conv(3) to D channels; the decoder mirrors it with transposed convolutions.
ELU activations, weight-normalized causal convolutions. See config.py for the frame arithmetic.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import fsspec
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from videopoet.core.config import ConfigError, from_dict, to_dict
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_bytes, atomic_write_text, join
from videopoet.tokenizers.soundstream.config import SoundStreamConfig
from videopoet.tokenizers.soundstream.quantizer import ResidualVQ

if TYPE_CHECKING:
    from videopoet.tokenizers.soundstream.losses import SoundStreamLoss

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def _maybe_wn(conv: nn.Module, enabled: bool) -> nn.Module:
    return weight_norm(conv) if enabled else conv


class Conv1d(nn.Module):
    """Conv1d whose output length is exactly `ceil(L / stride)` for L a multiple of stride: `L / stride`.

    Pads `dilation * (kernel - 1) + 1 - stride` samples in total, all on the left when causal.
    """

    def __init__(self, c_in, c_out, kernel, *, stride=1, dilation=1, causal=True, wn=True):
        super().__init__()
        self.conv = _maybe_wn(nn.Conv1d(c_in, c_out, kernel, stride=stride, dilation=dilation), wn)
        total = dilation * (kernel - 1) + 1 - stride
        self.pad = (total, 0) if causal else (total // 2, total - total // 2)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, L) -> (B, C', L / stride)
        return self.conv(F.pad(x, self.pad))


class ConvTranspose1d(nn.Module):
    """Transposed conv with kernel 2*stride whose output is exactly `L * stride` long (trims the overlap)."""

    def __init__(self, c_in, c_out, stride, *, causal=True, wn=True):
        super().__init__()
        self.conv = _maybe_wn(nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride), wn)
        # output is L*s + s long; a causal decoder drops the s samples that depend on the future
        self.trim = (0, stride) if causal else (stride // 2, stride - stride // 2)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, L) -> (B, C', L * stride)
        y = self.conv(x)
        left, right = self.trim
        return y[..., left : y.shape[-1] - right]


class ResidualUnit(nn.Module):
    """x + Conv1(ELU(Conv7_dilated(ELU(x))))."""

    def __init__(self, c, dilation, kernel, causal, wn):
        super().__init__()
        self.block = nn.Sequential(
            nn.ELU(),
            Conv1d(c, c, kernel, dilation=dilation, causal=causal, wn=wn),
            nn.ELU(),
            Conv1d(c, c, 1, causal=causal, wn=wn),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Encoder(nn.Module):
    def __init__(self, cfg: SoundStreamConfig):
        super().__init__()
        k, causal, wn = cfg.kernel_size, cfg.causal, cfg.weight_norm
        widths = [cfg.channels] + [cfg.channels * m for m in cfg.channel_mults]
        layers: list[nn.Module] = [Conv1d(1, widths[0], k, causal=causal, wn=wn)]
        for c_in, c_out, s in zip(widths[:-1], widths[1:], cfg.strides):
            layers += [ResidualUnit(c_in, d, k, causal, wn) for d in cfg.dilations]
            layers += [nn.ELU(), Conv1d(c_in, c_out, 2 * s, stride=s, causal=causal, wn=wn)]
        layers += [nn.ELU(), Conv1d(widths[-1], cfg.latent_dim, 3, causal=causal, wn=wn)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, T * hop) -> (B, D, T)
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: SoundStreamConfig):
        super().__init__()
        k, causal, wn = cfg.kernel_size, cfg.causal, cfg.weight_norm
        widths = [cfg.channels] + [cfg.channels * m for m in cfg.channel_mults]
        layers: list[nn.Module] = [Conv1d(cfg.latent_dim, widths[-1], k, causal=causal, wn=wn)]
        for c_in, c_out, s in zip(widths[:0:-1], widths[-2::-1], cfg.strides[::-1]):
            layers += [nn.ELU(), ConvTranspose1d(c_in, c_out, s, causal=causal, wn=wn)]
            layers += [ResidualUnit(c_out, d, k, causal, wn) for d in cfg.dilations]
        layers += [nn.ELU(), Conv1d(widths[0], 1, k, causal=causal, wn=wn)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:  # (B, D, T) -> (B, 1, T * hop)
        return self.net(z)


@dataclass
class SoundStreamOutput:
    recon: Tensor
    """`(B, samples)` reconstruction, same length as the input (the un-encoded tail is zeros)."""
    codes: Tensor
    """`(B, L, frames)` long; -1 at levels switched off by quantizer dropout."""
    commit_loss: Tensor
    """Scalar RVQ commitment loss (weight it with SoundStreamLossConfig.commitment_weight)."""
    levels_used: Tensor
    """`(B,)` quantizer levels each example used."""
    perplexity: Tensor
    """`(L,)` per-level codebook perplexity in this batch."""
    valid_samples: int
    """Samples covered by the codes (`frames * hop`); losses compare only this prefix."""


class SoundStream(nn.Module):
    """Audio tokenizer. `encode`, `decode` and the training `forward` are separate; losses are in losses.py."""

    def __init__(self, cfg: SoundStreamConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVQ(
            dim=cfg.latent_dim,
            num_levels=cfg.num_levels,
            codebook_size=cfg.codebook_size,
            decay=cfg.ema_decay,
            kmeans_iters=cfg.kmeans_iters,
            dead_code_steps=cfg.dead_code_steps,
            dropout=cfg.quantizer_dropout,
        )
        self.decoder = Decoder(cfg)
        self.source: str | None = None
        """Where `from_pretrained` loaded this model from (None for a freshly built one)."""
        self.weights_sha256: str | None = None
        """sha256 of the loaded model.safetensors (None for a freshly built one)."""
        self.weight_norm_folded = False
        """True after `fold_weight_norm_` (inference only)."""

    # ---- frame arithmetic -------------------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    def num_frames(self, samples: int) -> int:
        """Latent frames for a wave of `samples` samples: floor(samples / hop) (34000 -> 106)."""
        return samples // self.hop_length

    def num_samples(self, frames: int) -> int:
        """Samples decoded from `frames` frames: frames * hop."""
        return frames * self.hop_length

    @property
    def id(self) -> str:
        """Identifies the tokenizer in token shards: kind, config hash and (when loaded) weights checksum."""
        cfg_hash = hashlib.sha256(json.dumps(to_dict(self.cfg), sort_keys=True).encode()).hexdigest()[:12]
        weights = (self.weights_sha256 or "untrained")[:16]
        return f"soundstream:cfg-{cfg_hash}:sha256-{weights}"

    def _as_batch(self, wave: Tensor) -> Tensor:
        """`(B, S)` or `(B, 1, S)` -> `(B, 1, frames * hop)` float."""
        if wave.dim() == 3 and wave.shape[1] == 1:
            wave = wave[:, 0]
        if wave.dim() != 2:
            raise UserError(
                f"SoundStream expects mono audio shaped (batch, samples) or (batch, 1, samples), got "
                f"{tuple(wave.shape)}; mix down to mono and add a batch dimension"
            )
        frames = self.num_frames(wave.shape[-1])
        if frames < 1:
            raise UserError(
                f"audio of {wave.shape[-1]} samples is shorter than one SoundStream frame "
                f"({self.hop_length} samples = {1000 * self.hop_length / self.cfg.sample_rate:.0f} ms); pad or drop it"
            )
        if not wave.is_floating_point():
            raise UserError(f"SoundStream expects float audio in [-1, 1], got dtype {wave.dtype}")
        return wave[:, None, : self.num_samples(frames)]

    # ---- inference API ----------------------------------------------------------------------------------
    def encode_latent(self, wave: Tensor) -> Tensor:
        """Continuous encoder output `(B, D, frames)` (before quantization)."""
        return self.encoder(self._as_batch(wave).to(self._dtype()))

    def encode(self, wave: Tensor, levels: int | None = None) -> Tensor:
        """Codes `(B, levels, frames)` long for 16 kHz mono `wave (B, S)` or `(B, 1, S)`; frames = S // 320.

        Deterministic in train and eval mode (never updates codebooks, no quantizer dropout). `levels`
        (default all) keeps only the first levels, i.e. a lower bitrate.
        """
        if levels is not None and not 1 <= levels <= self.cfg.num_levels:
            raise UserError(f"levels={levels} is outside 1..{self.cfg.num_levels} (the model's num_levels)")
        return self.quantizer.encode(self.encode_latent(wave), levels)

    def decode(self, codes: Tensor, length: int | None = None) -> Tensor:
        """Wave `(B, samples)` from codes `(B, l <= L, frames)`; samples = frames * 320, or `length` if given.

        A code of -1 means "level not used". With `length`, the output is zero-padded or cropped on the right
        to exactly `length` samples (use the original length to undo `encode`'s dropped sub-frame tail).
        """
        self._check_codes(codes)
        return self.decode_latent(self.quantizer.decode(codes), length)

    def decode_latent(self, latent: Tensor, length: int | None = None) -> Tensor:
        """Wave `(B, samples)` from a (quantized) latent `(B, D, frames)`."""
        wave = self.decoder(latent.to(self._dtype()))[:, 0]  # (B, frames * hop)
        if length is not None:
            wave = F.pad(wave, (0, length - wave.shape[-1])) if length > wave.shape[-1] else wave[:, :length]
        return wave

    def _check_codes(self, codes: Tensor) -> None:
        cfg = self.cfg
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= cfg.num_levels:
            raise UserError(
                f"codes must be shaped (batch, levels <= {cfg.num_levels}, frames), got {tuple(codes.shape)}; "
                "use layout.from_level_major() to turn a flat LM token sequence back into this shape"
            )
        if codes.dtype not in (torch.int64, torch.int32, torch.int16):
            raise UserError(f"codes must be integers, got dtype {codes.dtype}")
        if codes.numel() and (int(codes.min()) < -1 or int(codes.max()) >= cfg.codebook_size):
            raise UserError(
                f"codes range over [{int(codes.min())}, {int(codes.max())}] but each level has codes "
                f"0..{cfg.codebook_size - 1} (-1 = level unused); remove per-level vocabulary offsets first"
            )

    def _dtype(self) -> torch.dtype:
        return self.decoder.net[-1].conv.bias.dtype

    # ---- training forward -------------------------------------------------------------------------------
    def forward(self, wave: Tensor, update_codebooks: bool = True) -> SoundStreamOutput:
        """Encode, quantize (train mode: quantizer dropout + EMA/k-means/restarts), decode."""
        samples = wave.shape[-1]
        z = self.encode_latent(wave)  # (B, D, T)
        q = self.quantizer(z, update=update_codebooks)
        recon = self.decode_latent(q.quantized.to(z.dtype), length=samples)
        return SoundStreamOutput(
            recon=recon,
            codes=q.codes,
            commit_loss=q.commit_loss,
            levels_used=q.levels_used,
            perplexity=q.perplexity,
            valid_samples=self.num_samples(z.shape[-1]),
        )

    def loss(
        self, wave: Tensor, criterion: SoundStreamLoss, *, step: int = 0
    ) -> tuple[Tensor, dict[str, Tensor], SoundStreamOutput]:
        """Training forward + generator loss: `(total, parts, out)`. `criterion` (losses.SoundStreamLoss) owns
        the discriminators; give it `out.recon` for the discriminator step."""
        out = self(wave)
        total, parts = criterion.generator_loss(wave, out, step)
        return total, parts, out

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fold_weight_norm_(self) -> SoundStream:
        """For inference: store each weight-normalized convolution's weight `g * v / ||v||` as a plain weight.

        The outputs are the same (bit for bit); a forward no longer recomputes every weight (three small
        kernels per convolution; on an H100 the `small` encoder's forward over 16 windows took 2% less host
        time). The state dict then holds plain `weight`s, which no longer match the config, so
        `save_pretrained` refuses a folded model.
        """
        from torch.nn.utils import parametrize

        for m in self.modules():
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        self.weight_norm_folded = True
        return self

    # ---- checkpoints ------------------------------------------------------------------------------------
    def save_pretrained(self, url: str) -> None:
        """Write `config.json` and `model.safetensors` (generator + codebooks) under directory `url`."""
        if self.weight_norm_folded and self.cfg.weight_norm:
            raise UserError(
                "this SoundStream had its weight norm folded for inference (fold_weight_norm_); save the model "
                "before folding, or load the checkpoint again"
            )
        meta = {"kind": "soundstream", "format_version": FORMAT_VERSION, "config": to_dict(self.cfg)}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(join(url, WEIGHTS_NAME), save_safetensors(state, metadata={"format": "pt"}))
        atomic_write_text(join(url, CONFIG_NAME), json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, url: str, *, device: str | torch.device = "cpu") -> SoundStream:
        """Load a `save_pretrained` directory (local path or fsspec URL). Returns the model in eval mode."""
        cfg_url, weights_url = join(url, CONFIG_NAME), join(url, WEIGHTS_NAME)
        try:
            with fsspec.open(cfg_url, "r", encoding="utf-8") as f:
                meta = json.load(f)
            with fsspec.open(weights_url, "rb") as f:
                blob = f.read()
        except FileNotFoundError as e:
            raise UserError(
                f"no SoundStream checkpoint at {url}: {e.filename or e} is missing; expected {CONFIG_NAME} and "
                f"{WEIGHTS_NAME} written by SoundStream.save_pretrained"
            ) from None
        except json.JSONDecodeError as e:
            raise UserError(f"{cfg_url} is not valid JSON ({e}); re-save the checkpoint") from None
        if meta.get("kind") != "soundstream":
            raise UserError(f"{cfg_url} describes a {meta.get('kind')!r} model, not 'soundstream'")
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{cfg_url} has format_version {meta.get('format_version')}; this code reads {FORMAT_VERSION}"
            )
        try:
            cfg = from_dict(SoundStreamConfig, meta.get("config", {}))
        except ConfigError as e:
            raise UserError(f"{cfg_url}: {e}") from None
        model = cls(cfg)
        state = load_safetensors(blob)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(
                f"{weights_url} does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        model.source = url
        model.weights_sha256 = hashlib.sha256(blob).hexdigest()
        return model.to(device).eval()
