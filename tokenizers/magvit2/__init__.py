"""MAGVIT-v2 video/image tokenizer: causal 3D CNN encoder, lookup-free quantizer (2^K tokens), 3D CNN
decoder, and the 3D StyleGAN discriminator and losses it trains with. See `model.py` for usage.

Import as `videopoet.tokenizers.magvit2` (the top `tokenizers/` folder is a namespace portion on purpose).
Training: `train.py` (image pretraining -> inflation -> video + GAN), `data.py` (JPEG frame cache from real
media), `metrics.py` (PSNR, SSIM, codebook usage); how to run it: docs/TOKENIZER_TRAINING.md.

Where this differs from the paper (Yu et al. 2023), and why:
- Group norms take statistics per frame (the paper's are over the whole clip); otherwise the encoder is
  not causal and frame 0 of a video would not tokenize like the same image.
- The LFQ entropy loss sums the entropies of groups of `entropy_group_bits` bits (9 + 9 for K = 18)
  instead of one 2^18-way distribution: the per-token term is exact, the codebook term is an upper bound
  that is exact when the groups are independent (see `lfq.py`). The latent is RMS-normalized (no affine)
  before the sign.
- The discriminator's head is per-location (logits averaged) instead of flatten + dense, so any clip
  size or aspect ratio works; it has no normalization layers (the R1 penalty is per sample).
- Depth-to-space upsampling drops the first frame after each temporal doubling (1 + m -> 1 + 2m), the
  mirror of the causal encoder; the adaptive group norm's scale/shift come from a 1x1x1 projection of
  the quantized latent, expanded with the same causal time layout.
- No perceptual (VGG/LPIPS) network ships: `loss(perceptual=...)` takes any callable, off by default.
"""

from videopoet.tokenizers.magvit2.config import DiscriminatorConfig, MagvitConfig, annealed_weight
from videopoet.tokenizers.magvit2.discriminator import (
    Discriminator3D,
    generator_adversarial_loss,
    lecam_regularizer,
    r1_penalty,
)
from videopoet.tokenizers.magvit2.inflate import (
    deflate_state_dict,
    inflate_conv_weight,
    inflate_image_trained,
    inflate_state_dict,
)
from videopoet.tokenizers.magvit2.lfq import LFQ, bits_to_indices, indices_to_bits
from videopoet.tokenizers.magvit2.model import MagvitV2, PerceptualLoss, Reconstruction, per_frame

__all__ = [
    "LFQ",
    "Discriminator3D",
    "DiscriminatorConfig",
    "MagvitConfig",
    "MagvitV2",
    "PerceptualLoss",
    "Reconstruction",
    "annealed_weight",
    "bits_to_indices",
    "deflate_state_dict",
    "generator_adversarial_loss",
    "indices_to_bits",
    "inflate_conv_weight",
    "inflate_image_trained",
    "inflate_state_dict",
    "lecam_regularizer",
    "per_frame",
    "r1_penalty",
]
