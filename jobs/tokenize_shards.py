"""Pre-tokenize curated clips into Parquet token shards (MAGVIT-v2 video/image, SoundStream audio, text).

    videopoet tokenize out/curated output=out/tokens video.checkpoint=ckpt/magvit audio.checkpoint=ckpt/soundstream
    python jobs/tokenize_shards.py out/curated output=out/tokens video.checkpoint=... audio.checkpoint=... window.frames=41
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tokenize_shards.py s3://b/curated \
        output=s3://b/tokens video.checkpoint=s3://b/tok/magvit audio.checkpoint=s3://b/tok/soundstream

Reads the curation output's `clips/` Parquet (docs/CURATION.md) and cuts each clip into model windows
(17 frames at 8 fps by default; images are 1-frame samples; audio inputs become audio-only windows), with
the aligned 2.125 s of audio, the caption's text embeddings and, for clips with enough resolution, the
super-resolution target tokens (pipelines/tokenize_stages.py). Decoding runs as CPU tasks, the tokenizers
as an actor pool (a GPU per worker when the cluster has GPUs). Output (docs/SHARDS.md):
`shards/part-NNNNN.parquet` (one row per window), `manifest.json`, `rejects/` (clips or windows that
produced no sample, with the reason), `stats.json`, `config.yaml`.

Clips are assigned to shards by sorted clip_id (`clips_per_shard` each), and a shard is committed
atomically with its marker; a killed run re-run resumes and yields the same dataset; a finished run
re-run does nothing. The tokenizer checkpoints are required: the job never tokenizes with random weights.
(The module is not called `tokenize.py`: as `python jobs/tokenize.py` it would shadow the standard
library's `tokenize`, which Python imports at start-up, for every script in jobs/.)
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from videopoet.core.config import check, save_config
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_text, exists, join, read_text
from videopoet.core.log import Progress, get_logger
from videopoet.core.ray_runtime import RayConfig, init_ray
from videopoet.pipelines.base import OK, Stage
from videopoet.pipelines.commit import RunState, read_parquet_dir, write_parquet
from videopoet.pipelines.schema import CLIP_SCHEMA, REJECT_SCHEMA, reject_record, to_table
from videopoet.pipelines.shards import (
    DEFAULT_ROW_GROUP_SIZE,
    SCHEMA_VERSION,
    SHARD_DIR,
    write_manifest,
    write_shard,
)
from videopoet.pipelines.tokenize_stages import (
    AUDIO_RATE,
    AudioTokenizerConfig,
    AudioTokenizeStage,
    ChainStage,
    PoolConfig,
    SRConfig,
    TextConfig,
    TextEmbedStage,
    VideoTokenizerConfig,
    VideoTokenizeStage,
    WindowConfig,
    WindowDecodeStage,
    checkpoint_info,
    pick_device,
    unpack,
)

DEFAULT_CONFIG = "configs/tokenize.yaml"
POSITIONAL = ("input",)
log = get_logger("tokenize")
LAST_DATASET = None
"""The Ray Dataset of this process's last run (benchmarks print its `stats()`; nothing is computed here)."""

_CLIP_COLUMNS = [
    "clip_id",
    "input_id",
    "uri",
    "modality",
    "start_s",
    "end_s",
    "fps",
    "width",
    "height",
    "caption",
    "audio_uri",
]


@dataclass(kw_only=True)
class Config:
    input: str
    """Curation output URL (the folder holding `clips/`), or a folder / file of clip-row Parquet."""
    output: str
    """Output URL of the token dataset (local path or fsspec URL). Everything the job writes stays under it."""
    modalities: list[Literal["video", "image", "audio"]] = field(
        default_factory=lambda: ["video", "image", "audio"]
    )
    """Clip modalities to tokenize; clips of the others are recorded in rejects/ as `modality_off`."""
    clips_per_shard: int = 256
    """Clips per shard (one atomic commit each). Shards hold every window of their clips."""
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    """Rows per Parquet row group: the unit that readers shuffle and split across ranks."""
    window: WindowConfig = field(default_factory=WindowConfig)
    """Window length, frame rate, sizes and decoding."""
    sr: SRConfig = field(default_factory=SRConfig)
    """Super-resolution targets: the same windows at a higher resolution."""
    video: VideoTokenizerConfig = field(default_factory=VideoTokenizerConfig)
    """MAGVIT-v2 checkpoint and batch size."""
    audio: AudioTokenizerConfig = field(default_factory=AudioTokenizerConfig)
    """SoundStream checkpoint and batch size."""
    text: TextConfig = field(default_factory=TextConfig)
    """Caption text encoder."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    """Where the tokenizers run: device, dtype, CPUs, workers."""
    batch_windows: int = 64
    """Windows handed to a tokenizer worker per call (then split into each model's batch size). Every call
    pays a fixed cost (Ray Data's task round trip, staging, result block): on the H100, 64 windows per call
    tokenized 1.1-1.4x as fast as 32 (steady state, 1-window clips, across calls)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where to run: embedded local Ray (default) or a cluster address."""

    def __post_init__(self):
        check(bool(self.input), "input", self.input, "a curation output URL")
        check(bool(self.output), "output", self.output, "an output URL")
        check(len(self.modalities) > 0, "modalities", self.modalities, "at least one modality")
        check(self.clips_per_shard >= 1, "clips_per_shard", self.clips_per_shard, ">= 1")
        check(self.row_group_size >= 1, "row_group_size", self.row_group_size, ">= 1")
        check(self.batch_windows >= 1, "batch_windows", self.batch_windows, ">= 1")


# ----------------------------------------------------------------------------------------------- metadata


def build_meta(cfg: Config) -> dict:
    """Dataset metadata known before any work (the text encoder's id is added from the workers' rows)."""
    from videopoet.model.vocab import Vocab

    video = checkpoint_info(cfg.video.checkpoint, "magvit2", "video.checkpoint")
    audio = (
        checkpoint_info(cfg.audio.checkpoint, "soundstream", "audio.checkpoint")
        if cfg.audio.enabled
        else None
    )
    tf, sf = video["time_factor"], video["spatial_factor"]
    if (cfg.window.frames - 1) % tf:
        raise UserError(
            f"window.frames={cfg.window.frames} does not fit the MAGVIT-v2 checkpoint: it needs 1 + {tf}n frames "
            f"(e.g. 17 or 41)"
        )
    for w, h in cfg.window.sizes:
        if w % sf or h % sf:
            raise UserError(
                f"window.sizes entry [{w}, {h}] is not a multiple of the tokenizer's {sf} pixels per token"
            )
    vocab = Vocab(
        visual_bits=video["codebook_bits"],
        audio_levels=audio["num_levels"] if audio else 4,
        audio_codebook_size=audio["codebook_size"] if audio else 1024,
    )
    audio_frames = cfg.window.audio_samples // audio["hop_length"] if audio else None
    return {
        "schema_version": SCHEMA_VERSION,
        "video_tokenizer": video,
        "audio_tokenizer": audio,
        "text_encoder": None,
        "vocab": vocab.metadata(),
        "window": {
            "frames": cfg.window.frames,
            "fps": cfg.window.fps,
            "seconds": cfg.window.seconds,
            "stride_s": cfg.window.stride,
            "sizes": cfg.window.sizes,
            "latent_frames": 1 + (cfg.window.frames - 1) // tf,
            "audio_samples": cfg.window.audio_samples,
            "audio_frames": audio_frames,
            "audio_rate": AUDIO_RATE,
        },
        "sr": {"scale": cfg.sr.scale, "max_upscale": cfg.sr.max_upscale} if cfg.sr.enabled else None,
        "precision": None,
    }


def _check_same_meta(state_url: str, meta: dict) -> None:
    """A resumed run must make the same tokens: same checkpoints (by checksum), windows and sizes."""
    url = join(state_url, "meta.json")
    if not exists(url):
        atomic_write_text(url, json.dumps(meta, sort_keys=True, indent=1))
        return
    old = json.loads(read_text(url))
    diff = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
    if diff:
        raise UserError(
            f"{state_url.rsplit('/_state', 1)[0]} holds a run with different {', '.join(diff)} (e.g. another "
            "tokenizer checkpoint or window size); re-run with the original settings to resume it, or use a "
            "new output URL"
        )


# -------------------------------------------------------------------------------------------------- plan


def read_clips(url: str) -> list[dict]:
    """Clip rows of a curation output (`<url>/clips/`), or of a Parquet folder / file."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url)
    if fs.isdir(path) and fs.exists(f"{path}/clips"):
        table = read_parquet_dir(join(url, "clips"), CLIP_SCHEMA)
    elif fs.isdir(path):
        table = read_parquet_dir(url)
    elif fs.exists(path):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
    else:
        raise UserError(f"{url} does not exist; pass the output folder of `videopoet curate`")
    missing = [c for c in ("clip_id", "uri", "modality") if c not in table.column_names]
    if missing:
        raise UserError(f"{url} holds no curated clip rows: columns {missing} are missing (docs/CURATION.md)")
    cols = [c for c in _CLIP_COLUMNS if c in table.column_names]
    rows = table.select(cols).to_pylist()
    ids = [r["clip_id"] for r in rows]
    if len(set(ids)) != len(ids):
        dup = collections.Counter(ids).most_common(1)[0][0]
        raise UserError(f"{url}: clip_id {dup} appears more than once; clip ids must be unique")
    return sorted(rows, key=lambda r: r["clip_id"])


def load_or_create_plan(state: RunState, clips: list[dict], clips_per_shard: int) -> list[dict]:
    """Clip rows with their partition (sorted clip_id // clips_per_shard); re-runs must see the same clips."""
    url = join(state.state, "plan.parquet")
    plan = [dict(c, partition=i // clips_per_shard) for i, c in enumerate(clips)]
    if exists(url):
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            old = pq.read_table(f).to_pylist()
        if [(r["clip_id"], r["partition"]) for r in old] != [(r["clip_id"], r["partition"]) for r in plan]:
            raise UserError(
                f"{state.output} already holds a run over a different clip list or clips_per_shard; re-run "
                "with the original input and settings to resume it, or use a new output URL"
            )
        return plan
    write_parquet(
        url, pa.Table.from_pylist([{"clip_id": r["clip_id"], "partition": r["partition"]} for r in plan])
    )
    return plan


# ------------------------------------------------------------------------------------------------ stages


def build_stages(cfg: Config, *, cluster_has_gpu: bool, num_cpus: float, num_gpus: float) -> list[Stage]:
    # a worker call holds at most batch_windows windows: larger (padded) forward passes would only waste work
    video = dataclasses.replace(cfg.video, batch_size=min(cfg.video.batch_size, cfg.batch_windows))
    audio = dataclasses.replace(cfg.audio, batch_size=min(cfg.audio.batch_size, cfg.batch_windows))
    models: list[Stage] = [VideoTokenizeStage(video, cfg.pool, cluster_has_gpu=cluster_has_gpu)]
    if cfg.audio.enabled:
        models.append(AudioTokenizeStage(audio, cfg.pool, cluster_has_gpu=cluster_has_gpu))
    if cfg.text.enabled:
        models.append(TextEmbedStage(cfg.text, cfg.pool, cluster_has_gpu=cluster_has_gpu))
    chain = ChainStage(models, batch_size=cfg.batch_windows, memory_mb=cfg.pool.memory_mb)
    if chain.resources.gpus:  # a small machine still needs a core for a decode task beside the GPU worker
        room = max(1.0, num_cpus - cfg.window.cpus)
        chain.resources = dataclasses.replace(chain.resources, cpus=min(chain.resources.cpus, room))
    chain.calls_in_flight = cfg.pool.calls_in_flight
    chain.concurrent_calls = cfg.pool.concurrent_calls if chain.resources.gpus else 1
    if cfg.pool.workers:
        chain.concurrency = cfg.pool.workers
    elif chain.resources.gpus:
        chain.concurrency = (1, max(1, int(num_gpus // chain.resources.gpus)))
    else:  # leave room for at least one decode task, or the pipeline starves
        chain.concurrency = (1, max(1, int((num_cpus - cfg.window.cpus) // chain.resources.cpus)))
    decode = WindowDecodeStage(
        window=cfg.window, sr=cfg.sr, audio=cfg.audio.enabled, modalities=tuple(cfg.modalities)
    )
    return [decode, chain]


# ------------------------------------------------------------------------------------- collect + commit


def _is_set(v) -> bool:
    return v is not None and not (isinstance(v, float) and v != v)


def to_shard_row(r: dict) -> dict:
    """An in-flight window row -> a shard row (pipelines/shards.py columns)."""
    out = {
        k: (r.get(k) if _is_set(r.get(k)) else None)
        for k in (
            "sample_id",
            "clip_id",
            "input_id",
            "uri",
            "modality",
            "caption",
            "start_s",
            "end_s",
            "fps",
            "source_width",
            "source_height",
            "width",
            "height",
            "sr_width",
            "sr_height",
        )
    }
    out["window_index"] = int(r["window_index"])
    out["num_frames"] = int(r.get("num_frames") or 0)
    for k in ("width", "height", "sr_width", "sr_height", "source_width", "source_height"):
        out[k] = int(out[k]) if out[k] is not None else None
    video = unpack(r, "video_tokens", np.int32)
    audio = unpack(r, "audio_tokens", np.int32)
    sr = unpack(r, "sr_video_tokens", np.int32)
    text = unpack(r, "text_embedding", np.float16)
    out.update(
        video_tokens=video,
        video_shape=None if video is None else list(video.shape),
        audio_tokens=audio,
        audio_shape=None if audio is None else list(audio.shape),
        sr_video_tokens=sr,
        sr_video_shape=None if sr is None else list(sr.shape),
        text_embedding=text,
        text_length=None if text is None else int(text.shape[0]),
        text_dim=None if text is None else int(text.shape[1]),
        num_tokens=(0 if video is None else video.size) + (0 if audio is None else audio.size),
    )
    return out


class _Collector:
    """Groups streamed rows by clip and partition; says when a partition has every row of its clips."""

    def __init__(self, plan: list[dict]):
        self.clips_of = collections.defaultdict(set)
        for r in plan:
            self.clips_of[r["partition"]].add(r["clip_id"])
        self.rows = collections.defaultdict(list)
        self.complete: set[str] = set()

    def add(self, row: dict) -> int | None:
        cid = row["clip_id"]
        self.rows[cid].append(row)
        rows = self.rows[cid]
        count = rows[0].get("window_count")
        whole_clip = any(not _is_set(r.get("window_count")) for r in rows)  # a clip-level rejection
        if whole_clip or (_is_set(count) and len(rows) >= int(count)):
            self.complete.add(cid)
        p = int(row["partition"])
        return p if self.clips_of[p] <= self.complete else None

    def take(self, p: int) -> list[dict]:
        return [r for cid in sorted(self.clips_of.pop(p)) for r in self.rows.pop(cid, [])]


class _Committer:
    def __init__(self, cfg: Config, state: RunState, meta: dict, clip_rows: dict[str, dict]):
        self.cfg, self.state, self.meta, self.clip_rows = cfg, state, meta, clip_rows
        self.text_url = join(state.state, "text_encoder.json")
        self.text = json.loads(read_text(self.text_url)) if exists(self.text_url) else None

    def _text_meta(self, ok: list[dict]) -> dict | None:
        if not self.cfg.text.enabled:
            return None
        ids = sorted({r["text_encoder_id"] for r in ok if _is_set(r.get("text_encoder_id"))})
        if len(ids) > 1:
            raise UserError(f"tokenizer workers used different text encoders {ids}; check text.path")
        if not ids:
            return self.text
        found = {
            "id": ids[0],
            "dim": int(next(r["text_dim"] for r in ok if _is_set(r.get("text_dim")))),
            "max_tokens": self.cfg.text.max_tokens,
        }
        if self.text is None:
            atomic_write_text(self.text_url, json.dumps(found, sort_keys=True))
            self.text = found
        elif self.text != found:
            raise UserError(
                f"this run's text encoder is {found['id']} but shards already committed in {self.cfg.output} used "
                f"{self.text['id']}; re-run with the original text settings or use a new output URL"
            )
        return self.text

    def commit(self, p: int, rows: list[dict], expected: set[str]) -> dict:
        seen = {r["clip_id"] for r in rows}
        for cid in sorted(expected - seen):  # a stage lost a clip: record it rather than drop it silently
            c = self.clip_rows[cid]
            rows.append(
                dict(
                    c,
                    status="rejected",
                    reject_stage="pipeline",
                    reject_reason="lost",
                    reject_detail="no row came back for this clip",
                    partition=p,
                )
            )
        by_clip = collections.defaultdict(list)
        for r in rows:
            by_clip[r["clip_id"]].append(r)
        for cid, rs in sorted(by_clip.items()):  # a clip whose windows came back only in part
            count = rs[0].get("window_count")
            got = {int(r["window_index"]) for r in rs if _is_set(r.get("window_index"))}
            if _is_set(count) and len(got) < int(count):
                missing = sorted(set(range(int(count))) - got)
                rows.append(
                    dict(
                        self.clip_rows[cid],
                        status="rejected",
                        reject_stage="pipeline",
                        reject_reason="lost",
                        reject_detail=f"windows {missing} of {int(count)} never came back",
                        partition=p,
                    )
                )
        ok = [r for r in rows if r.get("status", OK) == OK]
        bad = [r for r in rows if r.get("status", OK) != OK]
        for r in bad:  # rejected windows name themselves in the detail
            if _is_set(r.get("sample_id")):
                r["reject_detail"] = f"window {r['sample_id']}: {r.get('reject_detail') or ''}"
            if not _is_set(r.get("input_id")):
                r["input_id"] = self.clip_rows.get(r["clip_id"], {}).get("input_id") or ""
        name = self.state.part_name(p)
        info: dict = {"name": None, "rows": 0, "rejects": len(bad), "clips": len(expected)}
        if ok:
            meta = dict(self.meta, text_encoder=self._text_meta(ok))
            shard_rows = sorted((to_shard_row(r) for r in ok), key=lambda r: r["sample_id"])
            url = join(self.cfg.output, SHARD_DIR, f"{name}.parquet")
            info.update(
                write_shard(url, shard_rows, meta, self.cfg.row_group_size),
                name=f"{SHARD_DIR}/{name}.parquet",
            )
            info["meta"] = meta
        bad.sort(key=lambda r: (r["clip_id"], str(r.get("sample_id") or "")))
        rejects = to_table(
            [reject_record(dict(r, input_id=r.get("input_id") or "")) for r in bad], REJECT_SCHEMA
        )
        self.state.commit(p, {"rejects": rejects}, info)
        return info


def run_partitions(cfg: Config, state: RunState, pending: list[dict], meta: dict, session) -> dict:
    """Stream the clips of every uncommitted partition through the Ray Data plan; commit each as it completes.
    Returns {partitions: committed now, rows: rows streamed back (rejected ones included)}."""
    import ray.data

    from videopoet.pipelines.adapter import apply_stages

    log.info(
        "%d clips in %d shards to tokenize (%d shards already committed)",
        len(pending),
        len({r["partition"] for r in pending}),
        len(state.committed()),
    )
    stages = build_stages(
        cfg, cluster_has_gpu=session.num_gpus > 0, num_cpus=session.num_cpus, num_gpus=session.num_gpus
    )
    # one block per decode task: 1-row blocks made Ray Data track and bundle thousands of tiny objects,
    # which slowed the dispatch of the (short) decode tasks
    blocks = -(-len(pending) // cfg.window.clips_per_task)
    ds = ray.data.from_items(pending, override_num_blocks=max(1, min(blocks, 4096)))
    ds = apply_stages(ds, stages)
    collector = _Collector(pending)
    expected = {p: set(ids) for p, ids in collector.clips_of.items()}
    committer = _Committer(cfg, state, meta, {r["clip_id"]: r for r in pending})
    committed = 0
    windows = 0
    progress = Progress("tokenize", len(pending), "clips", logger=log)
    # pyarrow batches: the tokenizer workers return Arrow blocks (tokens as binary), read here without pandas
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        windows += batch.num_rows
        for row in batch.to_pylist():
            p = collector.add(row)
            progress.update(len(collector.complete), windows=windows, shards=committed)
            if p is not None:
                info = committer.commit(p, collector.take(p), expected[p])
                committed += 1
                log.info(
                    "committed %s: %d samples, %d rejected", state.part_name(p), info["rows"], info["rejects"]
                )
    for p in sorted(collector.clips_of):  # anything left: commit with the lost clips recorded
        committer.commit(p, collector.take(p), expected[p])
        committed += 1
    progress.update(len(collector.complete), windows=windows, shards=committed)
    progress.finish()
    global LAST_DATASET
    LAST_DATASET = ds
    return {"partitions": committed, "rows": windows}


def finalize(cfg: Config, state: RunState, plan: list[dict]) -> dict:
    """manifest.json and stats.json from the commit markers (no shard is re-read)."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(join(state.state, "committed"))
    infos = [
        json.loads(read_text(f"{fs.unstrip_protocol(p)}")) for p in sorted(fs.glob(f"{path}/part-*.json"))
    ]
    shards = [i for i in infos if i.get("rows")]
    metas = {json.dumps(i["meta"], sort_keys=True) for i in shards}
    if len(metas) > 1:
        raise UserError(
            f"shards of {cfg.output} were written with different metadata; re-tokenize into a new output"
        )
    meta = shards[0]["meta"] if shards else json.loads(read_text(join(state.state, "meta.json")))
    entries = [{k: v for k, v in i.items() if k not in ("meta", "rejects", "clips")} for i in shards]
    manifest = write_manifest(cfg.output, entries, meta)
    rejects = read_parquet_dir(join(cfg.output, "rejects"), REJECT_SCHEMA).to_pylist()
    reasons = collections.Counter(f"{r['stage']}:{r['reason']}" for r in rejects)
    stats = {
        "clips": len(plan),
        "samples": manifest["totals"]["rows"],
        "samples_by_modality": manifest["totals"]["rows_by_modality"],
        "tokens": manifest["totals"]["tokens"],
        "shards": manifest["totals"]["shards"],
        "bytes": manifest["totals"]["bytes"],
        "rejections": len(rejects),
        "rejections_by_stage_reason": dict(sorted(reasons.items())),
    }
    atomic_write_text(join(cfg.output, "stats.json"), json.dumps(stats, indent=1, sort_keys=True))
    return stats


def format_stats(stats: dict) -> str:
    lines = [
        f"clips: {stats['clips']}  samples: {stats['samples']}  "
        + "  ".join(f"{k}={v}" for k, v in stats["samples_by_modality"].items()),
        "tokens: " + "  ".join(f"{k}={v}" for k, v in stats["tokens"].items()),
        f"shards: {stats['shards']}  bytes: {stats['bytes']}",
    ]
    lines += [f"rejected {k}: {v}" for k, v in stats["rejections_by_stage_reason"].items()]
    return "\n".join(lines)


def main(cfg: Config) -> dict:
    state = RunState(cfg.output)
    if (finished := state.done()) is not None:
        log.info("%s is already complete; nothing to do.\n%s", cfg.output, format_stats(finished))
        return finished
    if removed := state.remove_interrupted_writes():
        log.info("removed %d temporary files left by an interrupted run", len(removed))
    meta = build_meta(cfg)  # refuses before any work without loadable checkpoints
    clips = read_clips(cfg.input)
    if not clips:
        raise UserError(f"{cfg.input} holds no clips; did curation keep anything? (see its stats.json)")
    plan = load_or_create_plan(state, clips, cfg.clips_per_shard)
    save_config(cfg, cfg.output)
    t0 = time.time()
    done = state.committed()
    pending = [dict(r, status=OK) for r in plan if r["partition"] not in done]
    run = {"partitions": 0, "rows": 0}
    if pending:
        session = init_ray(cfg.ray)
        if cfg.pool.device == "cuda" and session.num_gpus == 0:
            raise UserError(
                "pool.device=cuda but the Ray cluster has no GPUs; the tokenizer workers could never start. "
                "Use pool.device=auto (CPU fallback) or cpu, or join a cluster with GPU workers."
            )
        use_gpu = pick_device(cfg.pool.device, session.num_gpus > 0)
        meta["precision"] = cfg.pool.dtype if use_gpu else "float32"
        _check_same_meta(state.state, meta)
        run = run_partitions(cfg, state, pending, meta, session)
    stats = finalize(cfg, state, plan)
    stats["seconds"] = round(time.time() - t0, 1)
    stats["this_run"] = run
    state.mark_done(stats)
    log.info(
        "committed %d shards in %.1fs; output %s\n%s",
        run["partitions"],
        stats["seconds"],
        cfg.output,
        format_stats(stats),
    )
    return stats


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    job_entry(__file__)
