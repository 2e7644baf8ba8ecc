"""CLIP scoring of sampled clip frames: one embedding per clip, a caption-to-frame score, and a threshold.

`ClipScoreStage` loads an open_clip model once per worker and, per batch of rows, runs every sampled frame
of every row through `encode_image` in forward passes of `clip.batch_size` images (bf16/fp16 weights on
GPU; the host-side copies of one pass overlap the GPU work of the previous one). Each row gets
`clip_embedding` (the L2-normalized mean of its normalized frame embeddings), `clip_model` (model name +
weights identity) and, when the row has a caption, `clip_text_score`. The bulky `frames` column is dropped.

Weights are never optional: `check_clip_weights(cfg)` runs in the driver before the job starts and raises
`UserError` when they cannot be loaded, and the stage refuses to fall back to open_clip's random init.
`clip.weights` is a local checkpoint file, an fsspec URL to one (copied to `clip.cache_dir` first), or an
open_clip pretrained tag such as `laion2b_s34b_b79k` (needs network, or the file already in the cache).

    videopoet curate ... clip.weights=/models/open_clip_pytorch_model.bin
    videopoet curate ... clip.enabled=false      # dedup then falls back to thumbnail embeddings
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from videopoet.core.config import check
from videopoet.core.errors import UserError
from videopoet.core.log import get_logger
from videopoet.pipelines.base import Resources, Row, Stage, reject

if TYPE_CHECKING:
    import pandas as pd
    import torch

log = get_logger(__name__)

_TEXT_CACHE = 8192
"""Caption embeddings kept per worker: the clips of one video share its caption and arrive close together."""


@dataclass(kw_only=True)
class ClipConfig:
    enabled: bool = True
    """Score clips with CLIP. When false, no clip_* columns are written and dedup uses thumbnail embeddings."""
    model: str = "ViT-B-32"
    """open_clip model architecture name (see `open_clip.list_models()`), e.g. ViT-B-32, ViT-L-14."""
    weights: str = "laion2b_s34b_b79k"
    """Checkpoint for `model`: a local file, an fsspec URL to a file (s3://, gs://; copied to cache_dir), or an
    open_clip pretrained tag (needs network unless already downloaded). Never empty: random weights are refused."""
    cache_dir: str = "~/.cache/videopoet/clip"
    """Local folder where fsspec-URL checkpoints and pretrained-tag downloads are kept between runs."""
    batch_size: int = 256
    """Images per encode_image forward pass."""
    passes_per_call: int = 4
    """Forward passes per stage call: a Ray batch holds passes_per_call * batch_size // num_frames rows, and
    on a GPU the host work of one pass (copying frames, results) overlaps the forward of the previous one."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs. auto = one GPU per worker when the cluster (or this machine) has GPUs, else CPU."""
    cpus: float = 4.0
    """CPUs one CLIP worker reserves when it runs on CPU (torch uses that many threads)."""
    num_frames: int = 4
    """Frames per clip that are scored (evenly spaced over the row's sampled frames; all when it has fewer)."""
    text_score: Literal["mean", "max"] = "mean"
    """clip_text_score = mean (or max) over the clip's frames of cosine(caption embedding, frame embedding)."""
    min_text_score: float | None = None
    """Reject captioned clips whose clip_text_score is below this (low_clip_score). None = keep all. Rows
    without a caption are never rejected by it. Raw CLIP cosines are small: ~0.28 is a common ViT-B-32 cut."""

    def __post_init__(self):
        check(bool(self.model.strip()), "model", self.model, "an open_clip model name such as ViT-B-32")
        check(
            not self.enabled or bool(self.weights.strip()),
            "weights",
            self.weights,
            "a checkpoint path/URL or pretrained tag (random weights are refused); or set clip.enabled=false",
        )
        check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        check(self.passes_per_call >= 1, "passes_per_call", self.passes_per_call, ">= 1")
        check(self.cpus > 0, "cpus", self.cpus, "> 0")
        check(self.num_frames >= 1, "num_frames", self.num_frames, ">= 1")
        check(
            self.min_text_score is None or -1.0 <= self.min_text_score <= 1.0,
            "min_text_score",
            self.min_text_score,
            "null or a cosine in [-1, 1]",
        )


# ---------------------------------------------------------------------------------------------------------
# Weights: resolve clip.weights to a local file, identify it, load it (strictly).


@dataclass(frozen=True, kw_only=True)
class ResolvedWeights:
    path: str
    """Local checkpoint file."""
    tag: str | None
    """The open_clip pretrained tag when clip.weights was one (its preprocessing config applies)."""
    identity: str
    """`model:label@sha256:<16 hex>`, written to every row as clip_model."""


def _fix_hint(cfg: ClipConfig) -> str:
    return (
        "pass clip.weights=/path/to/open_clip_checkpoint.bin (a local file or s3://... URL of an open_clip "
        f"checkpoint for {cfg.model}) or clip.enabled=false"
    )


def _is_url(s: str) -> bool:
    scheme = urllib.parse.urlparse(s).scheme
    return len(scheme) > 1 and scheme != "file"  # a Windows drive letter is not a scheme


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _cache_dir(cfg: ClipConfig) -> str:
    return os.path.expanduser(cfg.cache_dir)


def _fetch_url(cfg: ClipConfig, url: str) -> str:
    """Copy an fsspec checkpoint URL into the local cache (atomically; reused while the size matches)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        size = fs.size(path)
    except FileNotFoundError:
        raise UserError(f"CLIP weights {url} do not exist; {_fix_hint(cfg)}") from None
    except Exception as e:  # noqa: BLE001 - credentials, unknown protocol, network: all user-fixable
        raise UserError(
            f"CLIP weights {url} cannot be read ({type(e).__name__}: {e}); {_fix_hint(cfg)}"
        ) from None
    key = hashlib.sha1(url.encode()).hexdigest()[:16]
    local_dir = os.path.join(_cache_dir(cfg), "url", key)
    local = os.path.join(local_dir, os.path.basename(path.rstrip("/")) or "checkpoint.bin")
    if os.path.isfile(local) and os.path.getsize(local) == size:
        return local
    os.makedirs(local_dir, exist_ok=True)
    tmp = f"{local}.tmp-{os.getpid()}"
    try:
        log.info("copying CLIP weights %s -> %s", url, local)
        fs.get_file(path, tmp)
        os.replace(tmp, local)  # concurrent workers on one node each publish a complete file
    except Exception as e:  # noqa: BLE001
        raise UserError(f"CLIP weights {url} could not be copied to {local}: {e}; {_fix_hint(cfg)}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return local


def _host_reachable(url: str, timeout: float = 5.0) -> bool:
    parsed = urllib.parse.urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _fetch_tag(cfg: ClipConfig, pcfg: dict) -> str:
    """Local file for an open_clip pretrained tag: the cache when it has it, else a download when online.

    open_clip's own download retries for ~45 s when offline; we look in the cache first and probe the host
    so an offline run fails at once with a message that says what to do.
    """
    import open_clip
    from open_clip.pretrained import _get_safe_alternatives

    cache = os.path.join(_cache_dir(cfg), "hub")
    tag = cfg.weights
    if pcfg.get("file"):
        return pcfg["file"]
    if pcfg.get("hf_hub"):
        from huggingface_hub import constants, hf_hub_download

        repo, filename = os.path.split(pcfg["hf_hub"])
        filename = filename or "open_clip_pytorch_model.bin"
        for name in [*_get_safe_alternatives(filename), filename]:
            try:
                return hf_hub_download(repo, name, cache_dir=cache, local_files_only=True)
            except Exception:  # noqa: BLE001 - not cached under this name
                continue
        offline = (
            os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or constants.HF_HUB_OFFLINE
        )
        host = constants.ENDPOINT
    else:
        url = pcfg.get("url", "")
        cached = os.path.join(cache, os.path.basename(url))
        if url and os.path.isfile(cached):
            return cached
        offline, host = False, url
    if offline or not _host_reachable(host):
        raise UserError(
            f"CLIP weights: pretrained tag '{tag}' of {cfg.model} is not in the cache {cache} and {host} "
            f"cannot be reached (offline). Download it on a machine with network, or {_fix_hint(cfg)}"
        )
    try:
        return open_clip.download_pretrained(pcfg, cache_dir=cache)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"CLIP weights: downloading tag '{tag}' failed ({e}); {_fix_hint(cfg)}") from None


def resolve_weights(cfg: ClipConfig) -> ResolvedWeights:
    """Turn `cfg.weights` into a local checkpoint file and its identity, or raise `UserError`."""
    import open_clip

    if cfg.model not in open_clip.list_models():
        raise UserError(
            f"clip.model={cfg.model!r} is not an open_clip model; pick one of open_clip.list_models(), "
            "e.g. ViT-B-32, ViT-B-16, ViT-L-14"
        )
    weights = cfg.weights.strip()
    if not weights:
        raise UserError(f"clip.weights is empty: CLIP would score with random weights; {_fix_hint(cfg)}")
    tag = None
    pcfg = open_clip.get_pretrained_cfg(cfg.model, weights) if not _is_url(weights) else {}
    if pcfg and not os.path.exists(weights):
        tag, path = weights, _fetch_tag(cfg, pcfg)
    elif _is_url(weights):
        path = _fetch_url(cfg, weights)
    else:
        path = os.path.expanduser(weights.removeprefix("file://"))
        if not os.path.exists(path):
            tags = open_clip.list_pretrained_tags_by_model(cfg.model)
            raise UserError(
                f"CLIP weights {weights} do not exist (not a file, and not an open_clip pretrained tag of "
                f"{cfg.model}; its tags: {', '.join(tags) or 'none'}); {_fix_hint(cfg)}"
            )
        if not os.path.isfile(path):
            raise UserError(f"CLIP weights {weights} is a folder, not a checkpoint file; {_fix_hint(cfg)}")
    try:
        digest = _sha256(path)
    except OSError as e:
        raise UserError(f"CLIP weights {weights} cannot be read ({e}); {_fix_hint(cfg)}") from None
    label = tag or os.path.basename(path)
    return ResolvedWeights(path=path, tag=tag, identity=f"{cfg.model}:{label}@sha256:{digest[:16]}")


def load_clip(
    cfg: ClipConfig, device: str = "cpu", precision: str = "fp32", resolved: ResolvedWeights | None = None
):
    """(model in eval mode, tokenizer, ResolvedWeights). Loads strictly; never random weights.
    `precision` is open_clip's: fp32, or bf16/fp16 (low-precision weights, fp32 LayerNorm)."""
    import open_clip
    from open_clip.transform import merge_preprocess_dict

    resolved = resolved or resolve_weights(cfg)
    pcfg = open_clip.get_pretrained_cfg(cfg.model, resolved.tag) if resolved.tag else {}
    try:
        model = open_clip.create_model(
            cfg.model,
            pretrained=resolved.path,
            require_pretrained=True,
            device=device,
            precision=precision,
            force_quick_gelu=bool(pcfg.get("quick_gelu", False)),
            force_preprocess_cfg=merge_preprocess_dict({}, pcfg) or None,
        )
    except Exception as e:  # noqa: BLE001 - unpicklable file, wrong architecture, truncated download...
        msg = " ".join(str(e).split())[:600]
        raise UserError(
            f"CLIP weights {cfg.weights} (local file {resolved.path}) cannot be loaded into open_clip model "
            f"{cfg.model}: {type(e).__name__}: {msg}. Check that the checkpoint matches clip.model; "
            f"{_fix_hint(cfg)}"
        ) from None
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    return model, tokenizer, resolved


def check_clip_weights(cfg: ClipConfig) -> str | None:
    """Driver pre-flight: load the configured weights once on CPU. Returns the weights identity (None when
    CLIP is disabled) or raises `UserError` saying which weights failed and what to pass instead."""
    if not cfg.enabled:
        return None
    model, _, resolved = load_clip(cfg, device="cpu")
    del model
    log.info("CLIP weights ok: %s", resolved.identity)
    return resolved.identity


# ---------------------------------------------------------------------------------------------------------
# The stage.


def _caption(row: Row) -> str | None:
    cap = row.get("caption")
    if isinstance(cap, str) and cap.strip():
        return cap.strip()
    return None


def _frames_array(frames: Any, num_frames: int) -> np.ndarray | None:
    """(n, H, W, 3) uint8 with n <= num_frames evenly spaced, or None for a row without frames (audio)."""
    if frames is None or (isinstance(frames, float) and math.isnan(frames)):
        return None
    if isinstance(frames, np.ndarray) and frames.dtype != object:
        arr = frames
    else:  # a list of per-frame arrays (pandas/Arrow round trips produce these)
        if len(frames) == 0:
            return None
        arr = np.stack([np.asarray(f) for f in frames])
    if arr.size == 0:
        return None
    if arr.ndim == 3:  # a single image
        arr = arr[None]
    assert arr.ndim == 4 and arr.shape[-1] == 3, f"frames must be (N, H, W, 3) RGB, got shape {arr.shape}"
    assert arr.dtype == np.uint8, f"frames must be uint8, got {arr.dtype}"
    if len(arr) > num_frames:
        idx = np.linspace(0, len(arr) - 1, num_frames).round().astype(int)
        arr = arr[idx]
    return arr


class ClipScoreStage(Stage):
    """CLIP image embeddings per clip, caption-to-frame score, optional `low_clip_score` filter."""

    name = "clip"
    stateful = True

    def __init__(self, cfg: ClipConfig, *, cluster_has_gpu: bool | None = None):
        """`cluster_has_gpu`: whether GPU workers exist (the driver passes it from the Ray cluster's
        resources). None = ask torch on this machine. Only used when `cfg.device == "auto"`."""
        self.cfg = cfg
        if cfg.device == "auto":
            if cluster_has_gpu is None:
                import torch

                cluster_has_gpu = torch.cuda.is_available()
            self.use_gpu = bool(cluster_has_gpu)
        else:
            self.use_gpu = cfg.device == "cuda"
        # on a GPU: the main thread (copies, launches) and the caption-tokenizing thread
        self.resources = Resources(cpus=2.0, gpus=1.0) if self.use_gpu else Resources(cpus=cfg.cpus)
        self.batch_size = max(1, cfg.passes_per_call * cfg.batch_size // cfg.num_frames)
        self.model = None

    # -- setup --------------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.model is not None:
            return
        import torch

        if self.use_gpu and not torch.cuda.is_available():
            if self.cfg.device == "cuda":
                raise UserError(
                    "clip.device=cuda but this worker sees no CUDA device; use clip.device=auto or cpu"
                )
            log.warning("CLIP stage asked for a GPU but this worker has none; running on CPU")
        self.device = torch.device("cuda" if self.use_gpu and torch.cuda.is_available() else "cpu")
        # GPU: low-precision weights (open_clip's OpenAI-style bf16/fp16, LayerNorm kept in fp32) rather than
        # autocast, whose per-call weight casts and dispatch double the CPU cost of launching a forward
        if self.device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.dtype = torch.float32
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")
        self.model, self.tokenizer, resolved = load_clip(
            self.cfg, device=str(self.device), precision=precision
        )
        self.model_id = resolved.identity
        import open_clip

        pre = open_clip.get_model_preprocess_cfg(self.model)
        size = pre.get("size", self.model.visual.image_size)
        self.image_size = tuple(size) if isinstance(size, list | tuple) else (size, size)
        # uint8 -> normalized float as one fused multiply-add: x * scale + shift
        mean = torch.tensor(pre["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(pre["std"], device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std
        self._bufs: dict[int, torch.Tensor] = {}
        # on a GPU, frames of the next passes are copied into pinned memory while this thread launches
        self._fill_pool = ThreadPoolExecutor(2, thread_name_prefix="clip-fill")
        self._copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        # tokenizing (ftfy + BPE, ~0.2 ms a caption) runs on this thread while the image forward runs
        self._tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="clip-tokenize")
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        log.info("CLIP %s on %s (%s)", self.model_id, self.device, precision)

    # -- tensors ------------------------------------------------------------------------------------------
    def _to_model_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 on device -> (B, 3, S, S) normalized float (resize shortest side + center crop
        only when the frames are not already at the model's size)."""
        import torch
        import torch.nn.functional as F

        x = x.permute(0, 3, 1, 2)  # (B, 3, H, W), a channels-last view
        th, tw = self.image_size
        h, w = x.shape[-2:]
        if (h, w) != (th, tw):
            s = max(th / h, tw / w)
            nh, nw = max(th, round(h * s)), max(tw, round(w * s))
            x = F.interpolate(x.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            top, left = (nh - th) // 2, (nw - tw) // 2
            x = x[..., top : top + th, left : left + tw].clamp_(0, 255)
        x = torch.addcmul(self._shift, x, self._scale).to(self.dtype)
        # channels-last input is as fast on a GPU (measured), but slows the CPU patch-embedding conv
        return x if self.device.type == "cuda" else x.contiguous()

    def _staging(self, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Reusable host buffer `slot` for `shape` uint8 frames: pinned on GPU workers so the copy to the
        device is one fast DMA, and filled straight from the rows' arrays (no intermediate concatenate).
        Two slots alternate so one pass's buffer can be filled while the other's DMA is in flight."""
        import torch

        buf = self._bufs.get(slot)
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = torch.empty(shape, dtype=torch.uint8, pin_memory=self.device.type == "cuda")
            self._bufs[slot] = buf
        return buf[: shape[0]]

    def _fill(self, k: int, shape: tuple[int, ...], jobs, dma_done: list) -> torch.Tensor:
        """Copy pass k's `jobs` ((dst_lo, dst_hi, frames) slices of the rows' arrays) into staging slot k % 2.
        On a GPU this runs on a filler thread while the main thread launches the previous pass; it first
        waits until the DMA of pass k - 2 (the slot's last user) is done."""
        import torch

        if k >= 2:
            issued, event = dma_done[k - 2]
            issued.wait()
            if event is not None:
                event.synchronize()
        buf = self._staging(k % 2, shape)
        for lo, hi, src in jobs:
            buf[lo:hi].copy_(torch.from_numpy(np.ascontiguousarray(src)))
        return buf

    def _launch_images(self, groups: list[list[np.ndarray]]) -> Callable[[], np.ndarray]:
        """Start encoding every frame: `groups` of per-row (n_i, H, W, 3) uint8 arrays, one frame size per
        group, in forward passes of at most batch_size images. Returns a function that waits and gives the
        (sum n_i, D) float32 L2-normalized embeddings, rows in the order given.

        On a GPU nothing here waits for the forward passes: two filler threads copy the next passes' frames
        into pinned buffers while this thread launches the current pass, a side stream moves them to the GPU
        while the previous pass runs, and each pass's embeddings come back
        by an async copy into pinned memory.
        """
        import threading

        import torch

        cuda = self.device.type == "cuda"
        passes = []  # (shape, jobs, first output row)
        first = 0
        for arrays in groups:
            h, w = arrays[0].shape[1:3]
            offsets = np.cumsum([0] + [len(a) for a in arrays])
            for c0 in range(0, int(offsets[-1]), self.cfg.batch_size):
                c1 = min(c0 + self.cfg.batch_size, int(offsets[-1]))
                jobs = []  # the slices of rows' frames that fall in this pass, at buffer offsets
                for a, s in zip(arrays, offsets[:-1]):
                    lo, hi = max(c0, s), min(c1, s + len(a))
                    if lo < hi:
                        jobs.append((int(lo - c0), int(hi - c0), a[lo - s : hi - s]))
                passes.append(((c1 - c0, h, w, 3), jobs, first + c0))
            first += int(offsets[-1])
        dma_done = [(threading.Event(), torch.cuda.Event() if cuda else None) for _ in passes]

        def submit(k):
            shape, jobs, _ = passes[k]
            if cuda:
                return self._fill_pool.submit(self._fill, k, shape, jobs, dma_done)
            return self._fill(k, shape, jobs, dma_done)

        filled = {k: submit(k) for k in range(min(2, len(passes)))}
        out = None
        with torch.inference_mode():
            for k, (_, _, row0) in enumerate(passes):
                buf = filled.pop(k)
                if cuda:  # the copy runs on a side stream, overlapping the previous pass's forward
                    buf = buf.result()
                    issued, event = dma_done[k]
                    with torch.cuda.stream(self._copy_stream):
                        x = buf.to(self.device, non_blocking=True)
                        event.record(self._copy_stream)
                    issued.set()
                    compute = torch.cuda.current_stream(self.device)
                    compute.wait_event(event)  # this pass's forward waits for its own frames only
                    x.record_stream(compute)  # x was allocated on the copy stream, is freed after the forward
                else:
                    x = buf
                    dma_done[k][0].set()
                if cuda and k + 2 < len(passes):  # its slot is free once pass k's DMA is done
                    filled[k + 2] = submit(k + 2)
                emb = self.model.encode_image(self._to_model_input(x)).float()
                if not cuda and k + 2 < len(passes):  # on CPU the forward read the slot itself
                    filled[k + 2] = submit(k + 2)
                emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                if out is None:
                    out = torch.empty((first, emb.shape[1]), dtype=torch.float32, pin_memory=cuda)
                out[row0 : row0 + len(emb)].copy_(emb, non_blocking=cuda)
        done = None
        if cuda:
            done = torch.cuda.Event()
            done.record()

        def result() -> np.ndarray:
            if done is not None:
                done.synchronize()
            return out.numpy()

        return result

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        import torch

        if self.device.type == "cuda":
            # a pageable host->device copy waits for the image forward to finish; a pinned one queues behind it
            tokens = tokens.pin_memory()
        tokens = tokens.to(self.device, non_blocking=True)
        with torch.inference_mode():
            emb = self.model.encode_text(tokens).float()
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _text_embeddings(self, captions: list[str]) -> Callable[[], dict[str, np.ndarray]]:
        """Start encoding the captions not in the cache; returns a function that waits and gives them all."""
        cache = self._text_cache
        todo = sorted({c for c in captions if c not in cache})
        tokens = self._tokenize_pool.submit(self.tokenizer, todo) if todo else None

        def result() -> dict[str, np.ndarray]:
            if tokens is not None:
                for c, e in zip(todo, self._encode_tokens(tokens.result()).cpu().numpy()):
                    cache[c] = e
            out = {}
            for c in captions:
                cache.move_to_end(c)
                out[c] = cache[c]
            while len(cache) > _TEXT_CACHE:
                cache.popitem(last=False)
            return out

        return result

    # -- rows ---------------------------------------------------------------------------------------------
    def process_rows(self, rows: list[Row]) -> list[Row]:
        import torch

        out: list[Row | None] = [None] * len(rows)
        todo: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}  # frames grouped by (H, W)
        for i, row in enumerate(rows):
            base = {k: v for k, v in row.items() if k != "frames"}
            try:
                arr = _frames_array(row.get("frames"), self.cfg.num_frames)
            except Exception as e:  # noqa: BLE001 - one malformed row must not fail the batch
                out[i] = reject(base, self.name, "error", f"bad frames: {type(e).__name__}: {e}")
                continue
            out[i] = base
            if arr is not None:  # rows without frames (audio) pass through without CLIP columns
                todo.setdefault(arr.shape[1:3], []).append((i, arr))
        if not todo:
            return [r for r in out if r is not None]

        order = [i for group in todo.values() for i, _ in group]
        sizes = np.array([len(a) for group in todo.values() for _, a in group])
        captions = [_caption(rows[i]) for i in order]
        texts = self._text_embeddings([c for c in captions if c])  # tokenizes while the images run
        # every frame of every row, in forward passes of batch_size images
        images = self._launch_images([[a for _, a in g] for g in todo.values()])
        text = texts()  # the text forward queues behind the image passes
        emb = images()

        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        seg = torch.from_numpy(np.repeat(np.arange(len(sizes)), sizes))  # frame -> row
        sums = torch.zeros(len(sizes), emb.shape[1]).index_add_(0, seg, torch.from_numpy(emb))
        means = sums.numpy() / sizes[:, None]  # np.add.reduceat over rows of a 2-D array is ~10x slower
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        has_cap = np.array([c is not None for c in captions])
        if has_cap.any():
            dim = emb.shape[1]
            per_row = np.stack([text[c] if c else np.zeros(dim, np.float32) for c in captions])
            cos = (emb * np.repeat(per_row, sizes, axis=0)).sum(1)  # (n_frames,)
            if self.cfg.text_score == "max":
                scores = np.maximum.reduceat(cos, starts)
            else:
                scores = np.add.reduceat(cos, starts) / sizes
        thr = self.cfg.min_text_score
        for k, (i, mean) in enumerate(zip(order, means.tolist())):
            out[i]["clip_embedding"] = mean
            out[i]["clip_model"] = self.model_id
            if not has_cap[k]:
                continue
            score = float(scores[k])
            out[i]["clip_text_score"] = score
            if thr is not None and score < thr:
                out[i] = reject(
                    out[i],
                    self.name,
                    "low_clip_score",
                    f"caption-to-frame CLIP score {score:.4f} ({self.cfg.text_score} over "
                    f"{sizes[k]} frames) < clip.min_text_score={thr}",
                )
        return [r for r in out if r is not None]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = super().__call__(batch)
        return out.drop(columns=["frames"], errors="ignore")  # also off rows that were rejected upstream
