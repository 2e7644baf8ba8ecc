"""Training data of the VideoPoet LM: token-shard rows -> task sequences, the task mixture, one-group batches.

    data = LMData(cfg.data, vocab=vocab, text_dim=384, seed=0, max_steps=1000, micro_batch=2, grad_accum=1,
                  rank=0, world_size=1)
    data.check_compatible(expected)         # before training: refuses bad or mismatched shards
    for mb in data.micro_batches(step):     # grad_accum micro-batches of this rank for optimizer step `step`
        mb.batch.tokens, mb.text, mb.task
    state = data.state_dict()               # this rank's streams; exact resume with load_state_dict

How a step's task is chosen (alternating gradient descent, one task per optimizer step):
1. Image or video. Step s draws "image" with probability `image_share_early` (0.9) while
   s < `image_phase` x max_steps (the first 25% of steps), and `image_share_late` (0.1) after, as in the
   VideoPoet paper (90% images for the first 25% of training, then 90% video). Image tasks are those
   that train on image rows (`IMAGE_TASKS`: text-to-image); every other task trains on video rows. When
   the mixture gives one side zero weight, every step is the other side.
2. The task, among that side's tasks, with probability proportional to its weight in `tasks`.
Both draws use an RNG seeded with (seed, step) only, so every rank, every micro-batch and a resumed run
make the same choice, and the step number is the whole state of the mixture.

Every sequence of a step comes from that task (alternating gradient descent), and every micro-batch from
rows of one *length group*: rows with the same video latent shape, audio frame count and presence of text
(a task's sequence length depends only on these), so a micro-batch needs no padding. Rows a task cannot
use (video-to-audio on a row without audio, text-to-video without a caption embedding, frame prediction
on a one-frame video, anything on an image row but text-to-image) wait in a bounded per-stream buffer
for a step whose task can use them; past `max_buffered_rows` the oldest buffered row is dropped (counted
in `dropped_rows`). Rows no task of the mixture can use (audio-only rows) are skipped (`skipped_rows`).
A task the dataset holds no rows of its side for (text-to-image without image rows) stops the run at
start; a task that finds no usable row within `max_scan_rows` rows stops it with a message naming the
task and what its rows need. Stylization needs tokenized flow/depth control videos, which token shards
do not hold yet: its weight must stay 0.

Per task, from one row (a video window, or an image): frame prediction and audio-video continuation
condition on the first k latent frames, k uniform in 1..T'-1 per example (audio split at the same time,
from the window fps, the MAGVIT-v2 time factor and the SoundStream frame rate in the dataset's
metadata); image-to-video on the first latent frame; inpainting / outpainting use the default masks of
`model/sequences.py`; text-to-image uses image rows (one latent frame).

Streams: the data is split into `streams` reader partitions (default: one per rank); rank r owns streams
r, r + W, ..., and micro-batch j of a step comes from its stream `j mod (streams / W)`. With a fixed
`streams`, the global batch of every step is the same whatever the number of ranks: a 1-process run
with `streams: 2` and twice the accumulation reproduces a 2-rank run, and a run may resume on a
different number of ranks (any that divides `streams`).

Text dropout (classifier-free guidance): each text-conditioned sequence keeps no caption embedding with
probability `text_dropout` (its `<text>` slots stay as they are, which is how the unconditional half of
guided sampling looks). Per-example choices (dropout, the context length k of frame prediction and
audio-video continuation) use an RNG seeded with (seed, step, stream, micro-batch).

Exact resume: a stream's state is its reader's state just before the oldest row still buffered, the
number of rows read since, and which of those are still buffered; loading replays those rows (`ShardReader`
states are per row), so buffers, reader position and RNGs are exactly as they were.

The reading machinery is shared with the super-resolution data (`jobs/sr_data.py`): `StreamConfig` (the
reader keys of `data`), `Stream` (one partition with its length-group buffers, grouping and usability given
by a `RowPolicy`; the LM's is `LM_ROWS`) and `ShardStreams` (a rank's streams, shard checks, counters, state).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from videopoet.core.config import check
from videopoet.core.errors import UserError
from videopoet.model.sequences import (
    MAX_TEXT_TOKENS,
    Batch,
    Sequence,
    SequenceBuilder,
    Task,
    audio_frames_for,
    collate,
)
from videopoet.model.vocab import Vocab

IMAGE_TASKS = frozenset({Task.TEXT_TO_IMAGE})
"""Tasks trained on image rows; all other tasks train on video rows."""
TEXT_TASKS = frozenset({Task.TEXT_TO_VIDEO, Task.TEXT_TO_IMAGE, Task.STYLIZATION})
"""Tasks whose sequences hold the caption embedding (and are subject to text dropout)."""


@dataclass(kw_only=True)
class TaskWeights:
    """Mixture weight of each task, relative within its side (image tasks / video tasks). 0 turns a task off."""

    text_to_image: float = 1.0
    """Text -> one latent frame (the image side; needs image rows with a caption embedding)."""
    text_to_video: float = 1.0
    """Text -> video (needs a caption embedding)."""
    unconditional: float = 0.25
    """Video from nothing."""
    frame_prediction: float = 1.0
    """First k latent frames -> the rest (k uniform in 1..T'-1 per example)."""
    image_to_video: float = 0.5
    """First latent frame -> the rest."""
    inpainting: float = 0.5
    """Video with a masked centre box -> the whole video."""
    outpainting: float = 0.5
    """Video with masked left/right quarters -> the whole video."""
    stylization: float = 0.0
    """Text + flow/depth control tokens -> video (token shards hold no control videos yet: keep 0)."""
    audio_to_video: float = 0.5
    """Audio tokens -> video (needs audio)."""
    video_to_audio: float = 0.5
    """Video -> audio tokens (needs audio)."""
    audio_video_continuation: float = 0.5
    """First k latent frames and their audio -> the rest of both (needs audio)."""

    def __post_init__(self) -> None:
        for t in Task:
            w = getattr(self, t.name.lower())
            check(w >= 0, t.name.lower(), w, ">= 0")
        check(
            any(getattr(self, t.name.lower()) > 0 for t in Task),
            "text_to_video",
            self.text_to_video,
            "some task with weight > 0",
        )

    def weights(self) -> dict[Task, float]:
        return {t: float(getattr(self, t.name.lower())) for t in Task if getattr(self, t.name.lower()) > 0}


@dataclass(kw_only=True)
class StreamConfig:
    """Where the token shards are and how the readers split, buffer and check them (shared by the LM and SR data)."""

    url: str = ""
    """Token-shard dataset (local folder or fsspec URL) written by the tokenize job."""
    streams: int | None = None
    """Reader partitions of the data (null: one per rank). Fix it to make the sample order independent of the number of ranks."""
    shuffle: bool = True
    """Shuffle shard row groups each epoch (seeded by train.seed)."""
    max_buffered_rows: int = 256
    """Rows a stream keeps waiting for a batch of their length group; past it, the oldest is dropped."""
    max_scan_rows: int = 20000
    """Rows a stream may read looking for usable ones before the run stops with an error."""
    expect_video_tokenizer: str | None = None
    """Refuse shards not made by this MAGVIT-v2: its id, or the sha256 (or a >= 12-digit prefix) of its model.safetensors. null: any, but all shards must agree."""
    expect_text_encoder: str | None = None
    """Refuse shards whose caption embeddings come from another text encoder (its id). null: any, all shards agreeing."""

    def __post_init__(self) -> None:
        check(self.streams is None or self.streams >= 1, "streams", self.streams, "null or >= 1")
        check(self.max_buffered_rows >= 1, "max_buffered_rows", self.max_buffered_rows, ">= 1")
        check(self.max_scan_rows >= 1, "max_scan_rows", self.max_scan_rows, ">= 1")


@dataclass(kw_only=True)
class DataConfig(StreamConfig):
    """Where the token shards are and how rows become task sequences."""

    expect_audio_tokenizer: str | None = None
    """Refuse shards not made by this SoundStream (id or sha256 / prefix of its model.safetensors). null: any, all shards agreeing."""
    tasks: TaskWeights = field(default_factory=TaskWeights)
    """Task mixture weights (relative within the image side and within the video side)."""
    image_phase: float = 0.25
    """Fraction of max_steps during which image steps have probability image_share_early."""
    image_share_early: float = 0.9
    """Probability of an image step (text-to-image) during the image phase (paper: 90% images)."""
    image_share_late: float = 0.1
    """Probability of an image step after the image phase (paper: 90% video)."""
    text_dropout: float = 0.1
    """Probability that a text-conditioned sequence gets no caption embedding (classifier-free guidance)."""
    text_slots: int = 64
    """Text-embedding slots in text-conditioned sequences (<= 64); longer captions are truncated."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.image_phase <= 1, "image_phase", self.image_phase, "in [0, 1]")
        check(0 <= self.image_share_early <= 1, "image_share_early", self.image_share_early, "in [0, 1]")
        check(0 <= self.image_share_late <= 1, "image_share_late", self.image_share_late, "in [0, 1]")
        check(0 <= self.text_dropout <= 1, "text_dropout", self.text_dropout, "in [0, 1]")
        check(
            1 <= self.text_slots <= MAX_TEXT_TOKENS, "text_slots", self.text_slots, f"in 1..{MAX_TEXT_TOKENS}"
        )


# ---------------------------------------------------------------------------------------------------------
# the token shards (pipelines/shards.py)


def open_reader(url: str, *, rank: int, world_size: int, seed: int, shuffle: bool):
    """A looping `ShardReader` over partition `rank` of `world_size` of the dataset at `url`."""
    from videopoet.pipelines.shards import ShardReader

    return ShardReader(url, rank=rank, world_size=world_size, seed=seed, shuffle=shuffle, loop=True)


def dataset_meta(url: str) -> dict:
    """The dataset's metadata (tokenizers, vocabulary, text encoder, window) from its manifest."""
    from videopoet.pipelines.shards import load_manifest

    return dict(load_manifest(url)["meta"])


@dataclass(frozen=True)
class Alignment:
    """How latent video frames and audio frames line up in time (from the dataset's metadata)."""

    fps: float = 8.0
    time_factor: int = 4
    audio_rate: float = 50.0

    @classmethod
    def from_meta(cls, meta: dict) -> Alignment:
        window = meta.get("window") or {}
        video = meta.get("video_tokenizer") or {}
        audio = meta.get("audio_tokenizer") or {}
        rate = cls.audio_rate
        if audio.get("sample_rate") and audio.get("hop_length"):
            rate = float(audio["sample_rate"]) / float(audio["hop_length"])
        return cls(
            fps=float(window.get("fps") or cls.fps),
            time_factor=int(video.get("time_factor") or cls.time_factor),
            audio_rate=rate,
        )

    def audio_frames(self, latent_frames: int) -> int:
        return audio_frames_for(
            latent_frames, fps=self.fps, time_factor=self.time_factor, audio_rate=self.audio_rate
        )


# ---------------------------------------------------------------------------------------------------------
# rows -> sequences


@dataclass(frozen=True)
class RowKey:
    """What a task's sequence length and usability depend on: rows with one key form one length group."""

    modality: str
    video_shape: tuple[int, ...] | None
    audio_frames: int | None
    has_text: bool

    @classmethod
    def of(cls, row: dict) -> RowKey:
        v = row.get("video_tokens")
        a = row.get("audio_tokens")
        t = row.get("text_embedding")
        return cls(
            modality=str(row.get("modality") or "video"),
            video_shape=None if v is None else tuple(int(s) for s in np.shape(v)),
            audio_frames=None if a is None else int(np.shape(a)[-1]),
            has_text=t is not None and len(t) > 0,
        )


def usable(task: Task, key: RowKey) -> bool:
    """Whether a row of `key` can make a `task` sequence (audio-only rows serve no LM task yet)."""
    if key.video_shape is None or len(key.video_shape) != 3:
        return False
    frames = key.video_shape[0]
    if task in IMAGE_TASKS:
        return key.modality == "image" and key.has_text
    if key.modality != "video":
        return False
    if task in (Task.TEXT_TO_VIDEO, Task.STYLIZATION) and not key.has_text:
        return False
    if task == Task.STYLIZATION:
        return False  # needs tokenized flow/depth control videos, which token shards do not hold yet
    if task in (Task.FRAME_PREDICTION, Task.IMAGE_TO_VIDEO, Task.AUDIO_VIDEO_CONTINUATION) and frames < 2:
        return False
    if task in (Task.AUDIO_TO_VIDEO, Task.VIDEO_TO_AUDIO, Task.AUDIO_VIDEO_CONTINUATION):
        least = 2 if task == Task.AUDIO_VIDEO_CONTINUATION else 1
        return key.audio_frames is not None and key.audio_frames >= least
    return True


def needs(task: Task) -> str:
    """What a task's rows need, for error messages."""
    return {
        Task.TEXT_TO_IMAGE: "image rows with a caption embedding",
        Task.TEXT_TO_VIDEO: "video rows with a caption embedding",
        Task.STYLIZATION: "tokenized flow/depth control videos (not in token shards yet)",
        Task.FRAME_PREDICTION: "video rows of at least 2 latent frames",
        Task.IMAGE_TO_VIDEO: "video rows of at least 2 latent frames",
        Task.AUDIO_TO_VIDEO: "video rows with audio tokens",
        Task.VIDEO_TO_AUDIO: "video rows with audio tokens",
        Task.AUDIO_VIDEO_CONTINUATION: "video rows of at least 2 latent frames with audio tokens",
    }.get(task, "video rows")


@dataclass
class MicroBatch:
    task: Task
    batch: Batch
    text: Tensor | None
    """`(B, S, text_dim)` float32 caption embeddings for `batch.text_positions` (None: no text slots)."""
    sample_ids: list[str]
    stream: int

    @property
    def tokens(self) -> int:
        return int(self.batch.tokens.numel())

    @property
    def seq_len(self) -> int:
        return int(self.batch.tokens.shape[1])


class RowBuilder:
    """Turns shard rows into task sequences with the model's vocabulary."""

    def __init__(self, cfg: DataConfig, vocab: Vocab, text_dim: int, alignment: Alignment | None = None):
        self.cfg, self.vocab, self.text_dim = cfg, vocab, text_dim
        self.alignment = alignment or Alignment()
        self.builder = SequenceBuilder(vocab, text_slots=cfg.text_slots)

    def build(self, task: Task, row: dict, rng: np.random.Generator) -> tuple[Sequence, Tensor | None, int]:
        """(sequence, caption embedding `(n, text_dim)` or None, n text slots to fill)."""
        try:
            return self._build(task, row, rng)
        except UserError as e:
            raise UserError(f"token row {row.get('sample_id')!r}, task {task.name.lower()}: {e}") from None

    def _build(self, task: Task, row: dict, rng: np.random.Generator):
        b, cfg = self.builder, self.cfg
        video = torch.from_numpy(np.asarray(row["video_tokens"], dtype=np.int64))
        audio = row.get("audio_tokens")
        audio = None if audio is None else torch.from_numpy(np.asarray(audio, dtype=np.int64))
        text, n_text = None, 0
        if task in TEXT_TASKS:
            emb = np.asarray(row["text_embedding"])
            if emb.ndim != 2 or emb.shape[1] != self.text_dim:
                raise UserError(
                    f"caption embedding shaped {emb.shape}, but the model takes (len, {self.text_dim}); the shards "
                    "were made with another text encoder than the model's text_dim"
                )
            if rng.random() >= cfg.text_dropout:
                text = torch.from_numpy(emb[: cfg.text_slots].astype(np.float32))
                n_text = text.shape[0]
        t = video.shape[0]
        if task == Task.TEXT_TO_IMAGE:
            seq = b.text_to_image(video[:1])
        elif task == Task.TEXT_TO_VIDEO:
            seq = b.text_to_video(video)
        elif task == Task.UNCONDITIONAL:
            seq = b.unconditional(video)
        elif task == Task.FRAME_PREDICTION:
            k = int(rng.integers(1, t))
            seq = b.frame_prediction(video[:k], video[k:])
        elif task == Task.IMAGE_TO_VIDEO:
            seq = b.image_to_video(video[:1], video[1:])
        elif task == Task.INPAINTING:
            seq = b.inpainting(video)
        elif task == Task.OUTPAINTING:
            seq = b.outpainting(video)
        elif task == Task.AUDIO_TO_VIDEO:
            seq = b.audio_to_video(audio, video)
        elif task == Task.VIDEO_TO_AUDIO:
            seq = b.video_to_audio(video, audio)
        elif task == Task.AUDIO_VIDEO_CONTINUATION:
            k = int(rng.integers(1, t))
            a = self.alignment.audio_frames(k)
            a = min(max(a, 1), audio.shape[1] - 1)
            seq = b.audio_video_continuation(video[:k], audio[:, :a], video[k:], audio[:, a:])
        else:
            raise UserError(
                f"task {task.name.lower()} cannot be trained from token shards yet ({needs(task)})"
            )
        return seq, text, n_text

    def collate(
        self, task: Task, items: list[tuple[Sequence, Tensor | None, int]]
    ) -> tuple[Batch, Tensor | None]:
        seqs = [s for s, _, _ in items]
        lengths = [n for _, _, n in items]
        batch = collate(seqs, text_lengths=lengths)
        S = batch.text_positions.shape[1]
        if S == 0 or task not in TEXT_TASKS:
            return batch, None
        text = torch.zeros(len(items), S, self.text_dim)
        for i, (_, emb, n) in enumerate(items):
            if n:
                text[i, :n] = emb[:n]
        return batch, text


# ---------------------------------------------------------------------------------------------------------
# streams


@dataclass(frozen=True)
class RowPolicy:
    """How a stream groups rows into length groups and which rows a task can use (the LM's: `LM_ROWS`)."""

    key: Callable[[dict], Hashable]
    """Row -> its length group (rows of one group batch without padding)."""
    usable: Callable[[Any, Hashable], bool]
    """(task, group) -> whether the task can use rows of the group."""
    needs: Callable[[Any], str]
    """Task -> what its rows need, for error messages."""
    name: Callable[[Any], str]
    """Task -> its name in messages."""
    hint: str
    """What to do when a task finds no usable rows."""


LM_ROWS = RowPolicy(
    key=RowKey.of,
    usable=usable,
    needs=needs,
    name=lambda task: task.name.lower(),
    hint="Give it weight 0 in data.tasks or add such rows",
)


class Stream:
    """One reader partition with its length-group buffers. Resumable exactly (see the module docstring)."""

    def __init__(self, index: int, reader, cfg: StreamConfig, tasks: set, rows: RowPolicy = LM_ROWS):
        self.index, self.reader, self.cfg, self.tasks, self.rows = index, reader, cfg, tasks, rows
        self._it: Iterator[dict] | None = None
        self.reads = 0  # rows read from the reader so far
        self.buffers: dict[Hashable, collections.deque] = collections.defaultdict(collections.deque)
        self.pre_state: dict[int, dict] = {}  # read index -> reader state just before that row
        self.dropped = 0  # buffered rows given up past max_buffered_rows
        self.skipped = 0  # rows no task of the mixture can use

    def _read(self) -> tuple[int, dict]:
        if self._it is None:
            self._it = iter(self.reader)
        pre = self.reader.state_dict()
        try:
            row = next(self._it)
        except StopIteration:
            raise UserError(
                f"data stream {self.index} ran out of rows (the shard reader does not loop)"
            ) from None
        idx = self.reads
        self.reads += 1
        self.pre_state[idx] = pre
        return idx, row

    def _buffered(self) -> int:
        return sum(len(q) for q in self.buffers.values())

    def _push(self, idx: int, row: dict) -> None:
        key = self.rows.key(row)
        if not any(self.rows.usable(t, key) for t in self.tasks):
            del self.pre_state[idx]  # no task of the mixture can use it (e.g. an audio-only row)
            self.skipped += 1
            return
        self.buffers[key].append((idx, row))
        while self._buffered() > self.cfg.max_buffered_rows:
            key = min(self.buffers, key=lambda k: self.buffers[k][0][0])
            i, _ = self.buffers[key].popleft()
            if not self.buffers[key]:
                del self.buffers[key]
            del self.pre_state[i]
            self.dropped += 1

    def _ready(self, task, n: int) -> Hashable | None:
        best = None
        for key, q in self.buffers.items():
            if (
                len(q) >= n
                and self.rows.usable(task, key)
                and (best is None or q[0][0] < self.buffers[best][0][0])
            ):
                best = key
        return best

    def take(self, task, n: int) -> list[dict]:
        """`n` rows of one length group usable by `task`, oldest group first."""
        scanned = 0
        key = self._ready(task, n)
        while key is None:
            if scanned >= self.cfg.max_scan_rows:
                raise UserError(
                    f"task {self.rows.name(task)} found no {n} rows of one length group in {scanned} rows of data "
                    f"stream {self.index} of {self.cfg.url}: it needs {self.rows.needs(task)}. {self.rows.hint}"
                )
            idx, row = self._read()
            self._push(idx, row)
            scanned += 1
            key = self._ready(task, n)
        q = self.buffers[key]
        out = []
        for _ in range(n):
            i, row = q.popleft()
            del self.pre_state[i]
            out.append(row)
        if not q:
            del self.buffers[key]
        return out

    def state_dict(self) -> dict:
        live = sorted(i for q in self.buffers.values() for i, _ in q)
        if live:
            anchor, start = self.pre_state[live[0]], live[0]
        else:
            anchor, start = self.reader.state_dict(), self.reads
        return {
            "reader": anchor,
            "replay": self.reads - start,
            "live": [i - start for i in live],
            "dropped": self.dropped,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.reader.load_state_dict(state["reader"])
        self._it = None
        self.reads, self.dropped, self.skipped = 0, int(state["dropped"]), int(state["skipped"])
        self.buffers.clear()
        self.pre_state.clear()
        live = set(state["live"])
        for _ in range(int(state["replay"])):
            idx, row = self._read()
            if idx in live:
                self.buffers[self.rows.key(row)].append((idx, row))
            else:  # consumed, dropped or skipped before the checkpoint
                del self.pre_state[idx]


# ---------------------------------------------------------------------------------------------------------
# the data of one rank


class ShardStreams:
    """This rank's reader streams over the token shards: ownership, shard checks, counters, exact-resume state.

    Micro-batch j of a step comes from stream `stream_for(j)` (see "Streams" in the module docstring).
    """

    def __init__(
        self,
        cfg: StreamConfig,
        *,
        seed: int,
        grad_accum: int,
        tasks: set,
        rows: RowPolicy,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.cfg, self.seed, self.grad_accum, self.rank, self.world = cfg, seed, grad_accum, rank, world_size
        self.num_streams = cfg.streams or world_size
        if self.num_streams % world_size:
            raise UserError(
                f"data.streams = {self.num_streams} is not a multiple of the {world_size} ranks; each rank owns "
                "the same number of streams"
            )
        per_rank = self.num_streams // world_size
        if grad_accum % per_rank:
            raise UserError(
                f"each rank owns {per_rank} data streams (data.streams / ranks) but takes {grad_accum} micro-batches "
                "per step (train.grad_accum); grad_accum must be a multiple of it"
            )
        self.owned = [s for s in range(self.num_streams) if s % world_size == rank]
        self.streams = {
            s: Stream(
                s,
                open_reader(cfg.url, rank=s, world_size=self.num_streams, seed=seed, shuffle=cfg.shuffle),
                cfg,
                set(tasks),
                rows,
            )
            for s in self.owned
        }

    def stream_for(self, j: int) -> tuple[int, int]:
        """(stream index, its local micro-batch number) of this rank's micro-batch j of a step."""
        per = len(self.owned)
        return self.owned[j % per], j // per

    @property
    def reader(self):
        return next(iter(self.streams.values())).reader

    @property
    def meta(self) -> dict:
        return dict(self.reader.meta)

    def check_compatible(self, expected: dict) -> None:
        """`ShardReader.check_compatible` on every shard of the dataset (UserError naming the shard)."""
        self.reader.check_compatible(expected)

    @property
    def dropped_rows(self) -> int:
        return sum(s.dropped for s in self.streams.values())

    @property
    def skipped_rows(self) -> int:
        return sum(s.skipped for s in self.streams.values())

    def state_dict(self) -> dict[int, dict]:
        """States of this rank's streams, by global stream index."""
        return {s: st.state_dict() for s, st in self.streams.items()}

    def load_state_dict(self, states: dict[int, Any]) -> None:
        states = {int(k): v for k, v in states.items()}
        missing = [s for s in self.owned if s not in states]
        if missing:
            raise UserError(
                f"the checkpoint holds data states for streams {sorted(states)}, not for {missing}; resume with a "
                f"number of ranks that divides data.streams = {len(states)}"
            )
        for s in self.owned:
            self.streams[s].load_state_dict(states[s])


class LMData(ShardStreams):
    """This rank's task sequences for each optimizer step (see the module docstring)."""

    def __init__(
        self,
        cfg: DataConfig,
        *,
        vocab: Vocab,
        text_dim: int,
        seed: int,
        max_steps: int,
        micro_batch: int,
        grad_accum: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        weights = cfg.tasks.weights()
        super().__init__(
            cfg,
            seed=seed,
            grad_accum=grad_accum,
            tasks=set(weights),
            rows=LM_ROWS,
            rank=rank,
            world_size=world_size,
        )
        self.max_steps, self.micro_batch = max_steps, micro_batch
        self.rows = RowBuilder(cfg, vocab, text_dim, Alignment.from_meta(self.meta))
        self.image_tasks = {t: w for t, w in weights.items() if t in IMAGE_TASKS}
        self.video_tasks = {t: w for t, w in weights.items() if t not in IMAGE_TASKS}
        self._check_tasks_have_rows(weights)

    def _check_tasks_have_rows(self, weights: dict[Task, float]) -> None:
        """Fail at start, not at the first step of a task that the dataset cannot feed."""
        by_modality = (getattr(self.reader, "manifest", {}).get("totals") or {}).get("rows_by_modality")
        for task in weights:
            if task == Task.STYLIZATION:
                raise UserError(
                    "data.tasks.stylization > 0, but token shards hold no tokenized flow/depth control videos "
                    "yet; set data.tasks.stylization=0"
                )
            side = "image" if task in IMAGE_TASKS else "video"
            if by_modality is not None and not by_modality.get(side):
                raise UserError(
                    f"data.tasks.{task.name.lower()} > 0, but {self.cfg.url} holds no {side} rows "
                    f"(rows by modality: {by_modality}); set data.tasks.{task.name.lower()}=0 or add {side}s"
                )

    def image_share(self, step: int) -> float:
        if not self.image_tasks:
            return 0.0
        if not self.video_tasks:
            return 1.0
        early = step < self.cfg.image_phase * self.max_steps
        return self.cfg.image_share_early if early else self.cfg.image_share_late

    def step_task(self, step: int) -> Task:
        """The one task of optimizer step `step` (identical on every rank; see the module docstring)."""
        rng = np.random.default_rng([self.seed, step, 0x7A5C])
        side = self.image_tasks if rng.random() < self.image_share(step) else self.video_tasks
        tasks = sorted(side)
        w = np.array([side[t] for t in tasks], dtype=np.float64)
        return tasks[int(rng.choice(len(tasks), p=w / w.sum()))]

    def micro_batches(self, step: int) -> list[MicroBatch]:
        """The `grad_accum` micro-batches of this rank for step `step`, all of that step's task."""
        task = self.step_task(step)
        out = []
        for j in range(self.grad_accum):
            sid, local = self.stream_for(j)
            rng = np.random.default_rng([self.seed, step, sid, local])
            rows = self.streams[sid].take(task, self.micro_batch)
            items = [self.rows.build(task, r, rng) for r in rows]
            batch, text = self.rows.collate(task, items)
            out.append(
                MicroBatch(
                    task=task,
                    batch=batch,
                    text=text,
                    sample_ids=[str(r.get("sample_id")) for r in rows],
                    stream=sid,
                )
            )
        return out
