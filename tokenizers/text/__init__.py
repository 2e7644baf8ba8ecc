"""Caption encoders (MiniLM bundled for laptops, T5 for VideoPoet) returning token-level embeddings."""

from videopoet.tokenizers.text.encoders import (
    HFTextEncoder,
    MiniLMTextEncoder,
    T5TextEncoder,
    TextEmbeddings,
    TextEncoderConfig,
    build_text_encoder,
)

__all__ = [
    "HFTextEncoder",
    "MiniLMTextEncoder",
    "T5TextEncoder",
    "TextEmbeddings",
    "TextEncoderConfig",
    "build_text_encoder",
]
