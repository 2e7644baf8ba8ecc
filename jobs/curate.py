"""Curate raw video/image/audio corpora into scored clips, with every input accounted for.

    videopoet curate INPUT [INPUT ...] --config configs/curate.yaml output=out/curated
    python jobs/curate.py out/sample output=out/curated clip.enabled=false
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/curate.py s3://bucket/raw output=s3://bucket/curated

Inputs are fsspec URLs (directories, globs, files) or manifests (.jsonl/.csv/.parquet with a `uri` column).
Stages (docs/CURATION.md): probe -> filter -> scene split + scores -> frame sampling -> CLIP -> audio, then a
global dedup. Output: `clips/` (Parquet, one row per kept clip), `rejects/` (Parquet ledger: uri, stage,
reason, detail), `inputs.parquet` (one row per input: kept or rejected), `stats.json`, `audio/`.
Partitions commit atomically; a killed run re-run resumes; a finished run re-run does nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import time
from dataclasses import dataclass, field

import pyarrow as pa

from videopoet.core.config import check, save_config
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_text, join
from videopoet.core.log import Progress, get_logger
from videopoet.core.ray_runtime import RayConfig, init_ray
from videopoet.pipelines.audio import AudioConfig, AudioExtractStage
from videopoet.pipelines.base import OK, Stage
from videopoet.pipelines.clip import ClipConfig, ClipScoreStage, check_clip_weights
from videopoet.pipelines.commit import RunState, read_parquet_dir, write_parquet
from videopoet.pipelines.dedup import DedupConfig, dedup_rows
from videopoet.pipelines.filters import FilterConfig, FilterStage
from videopoet.pipelines.frames import FrameSampleConfig, FrameSampleStage
from videopoet.pipelines.inputs import list_inputs
from videopoet.pipelines.probe import ProbeConfig, ProbeStage
from videopoet.pipelines.scenes import SceneConfig, SceneSplitStage
from videopoet.pipelines.schema import CLIP_SCHEMA, REJECT_SCHEMA, reject_record, to_table

DEFAULT_CONFIG = "configs/curate.yaml"
POSITIONAL = ("inputs",)
log = get_logger("curate")


@dataclass(kw_only=True)
class Config:
    inputs: list[str]
    """Corpus URLs: directories, globs, files, or manifests (.jsonl/.csv/.parquet with a `uri` column)."""
    output: str
    """Output URL (local path or fsspec URL). Everything the job writes stays under it."""
    exclude: list[str] = field(default_factory=lambda: [".*"])
    """fnmatch patterns (on relative paths and their parts) of listed files that are not inputs."""
    partition_size: int = 16
    """Inputs per atomically committed partition. Smaller = finer-grained resume, more files."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Probing (metadata, content hash, modality)."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Input-level filters (duration, resolution, aspect, fps, codecs, image size, audio silence)."""
    scenes: SceneConfig = field(default_factory=SceneConfig)
    """Scene split and per-clip motion/brightness scores and filters."""
    frames: FrameSampleConfig = field(default_factory=FrameSampleConfig)
    """Frames sampled per clip for CLIP, and the thumbnail embedding used for dedup without CLIP."""
    clip: ClipConfig = field(default_factory=ClipConfig)
    """CLIP scoring (open-clip-torch). Enabled only with loadable weights; the job refuses otherwise."""
    audio: AudioConfig = field(default_factory=AudioConfig)
    """Audio extraction (mono 16 kHz WAV per clip) and standalone-audio filters."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Exact (content hash) and near-duplicate (embedding cosine) dedup across the whole run."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Where to run: embedded local Ray (default) or a cluster address."""

    def __post_init__(self):
        check(len(self.inputs) > 0, "inputs", self.inputs, "at least one corpus URL")
        check(bool(self.output), "output", self.output, "an output URL")
        check(self.partition_size >= 1, "partition_size", self.partition_size, ">= 1")


def build_stages(cfg: Config, cluster_has_gpu: bool = False) -> list[Stage]:
    frames = cfg.frames
    if cfg.clip.enabled:  # CLIP decides how many frames it scores; sample exactly those
        frames = dataclasses.replace(frames, num_frames=cfg.clip.num_frames)
    stages: list[Stage] = [
        ProbeStage(cfg=cfg.probe),
        FilterStage(cfg=cfg.filter),
        SceneSplitStage(cfg=cfg.scenes),
        FrameSampleStage(cfg=frames, with_clip_frames=cfg.clip.enabled),
    ]
    if cfg.clip.enabled:
        stages.append(ClipScoreStage(cfg=cfg.clip, cluster_has_gpu=cluster_has_gpu))
    stages.append(AudioExtractStage(cfg=cfg.audio, output=cfg.output))
    return stages


class _Collector:
    """Groups streamed rows by input and partition; says when a partition has all of its inputs' rows."""

    def __init__(self, plan: list[dict]):
        self.inputs_of = collections.defaultdict(set)
        for r in plan:
            self.inputs_of[r["partition"]].add(r["input_id"])
        self.rows = collections.defaultdict(list)  # input_id -> rows
        self.complete: set[str] = set()

    def add(self, row: dict) -> int | None:
        """Add a row; return its partition if that partition just became complete."""
        iid = row["input_id"]
        self.rows[iid].append(row)
        clip_rows = [r for r in self.rows[iid] if r.get("clip_id")]
        whole_input = any(not r.get("clip_id") for r in self.rows[iid])
        if whole_input or (clip_rows and len(clip_rows) >= int(clip_rows[0]["clip_count"])):
            self.complete.add(iid)
        p = int(row["partition"])
        return p if self.inputs_of[p] <= self.complete else None

    def take(self, p: int) -> list[dict]:
        return [r for iid in sorted(self.inputs_of.pop(p)) for r in self.rows.pop(iid, [])]


def _clean(row: dict) -> dict:
    return {k: v for k, v in row.items() if not (isinstance(v, float) and v != v)}


def _commit(state: RunState, p: int, rows: list[dict], expected: set[str]) -> dict:
    seen = {r["input_id"] for r in rows}
    for iid in sorted(expected - seen):  # a stage lost an input: record it rather than drop it silently
        rows.append(
            {
                "input_id": iid,
                "uri": "?",
                "status": "rejected",
                "reject_stage": "pipeline",
                "reject_reason": "lost",
                "reject_detail": "no row came back for this input",
                "partition": p,
            }
        )
    rows.sort(key=lambda r: (r["uri"], r.get("clip_index") or 0, r.get("clip_id") or ""))
    ok = [r for r in rows if r.get("status", OK) == OK]
    bad = [reject_record(r) for r in rows if r.get("status", OK) != OK]
    state.commit(
        p,
        {"staging": to_table(ok, CLIP_SCHEMA), "rejects": to_table(bad, REJECT_SCHEMA)},
        {"clips": len(ok), "rejects": len(bad), "inputs": len(expected)},
    )
    return {"clips": len(ok), "rejects": len(bad)}


def run_partitions(cfg: Config, state: RunState, plan: list[dict]) -> int:
    """Stream every uncommitted partition through the Ray Data plan; commit each as it completes."""
    import ray
    import ray.data

    from videopoet.pipelines.adapter import apply_stages

    done = state.committed()
    pending = [dict(r, status=OK) for r in plan if r["partition"] not in done]
    if not pending:
        return 0
    log.info(
        "%d inputs in %d partitions to process (%d partitions already committed)",
        len(pending),
        len({r["partition"] for r in pending}),
        len(done),
    )
    ds = ray.data.from_items(pending, override_num_blocks=min(len(pending), 4096))
    ds = apply_stages(ds, build_stages(cfg, cluster_has_gpu=ray.cluster_resources().get("GPU", 0) > 0))
    collector = _Collector(pending)
    expected = {p: set(ids) for p, ids in collector.inputs_of.items()}
    committed = 0
    rows = 0
    progress = Progress("curate", len(pending), "inputs", logger=log)
    for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
        for row in batch.to_dict("records"):
            rows += 1
            p = collector.add(_clean(row))
            if p is not None:
                _commit(state, p, collector.take(p), expected[p])
                committed += 1
            progress.update(len(collector.complete), rows=rows, partitions=committed)
    for p in sorted(collector.inputs_of):  # anything left: commit with the lost inputs recorded
        _commit(state, p, collector.take(p), expected[p])
        committed += 1
    progress.update(len(collector.complete), rows=rows, partitions=committed)
    progress.finish()
    return committed


def finalize(cfg: Config, state: RunState, plan: list[dict]) -> dict:
    """Global steps over all committed partitions: dedup, final clips/, per-input ledger, stats."""
    staged = read_parquet_dir(join(cfg.output, "staging"), CLIP_SCHEMA).to_pylist()
    kept, dup_rejects = dedup_rows(staged, cfg.dedup)
    _remove_orphan_audio(kept, dup_rejects)
    by_part = collections.defaultdict(list)
    for r in kept:
        by_part[r["partition"]].append(r)
    for p in sorted({r["partition"] for r in plan}):
        write_parquet(
            join(cfg.output, "clips", f"{state.part_name(p)}.parquet"),
            to_table(by_part.get(p, []), CLIP_SCHEMA),
        )
    write_parquet(
        join(cfg.output, "rejects", "dedup.parquet"),
        to_table([reject_record(r) for r in dup_rejects], REJECT_SCHEMA),
    )
    rejects = read_parquet_dir(join(cfg.output, "rejects"), REJECT_SCHEMA).to_pylist()

    kept_by_input = collections.Counter(r["input_id"] for r in kept)
    rej_by_input = collections.defaultdict(list)
    for r in rejects:
        rej_by_input[r["input_id"]].append(r)
    ledger = []
    for r in plan:
        iid = r["input_id"]
        n_kept = kept_by_input.get(iid, 0)
        rej = rej_by_input.get(iid, [])
        ledger.append(
            {
                "input_id": iid,
                "uri": r["uri"],
                "outcome": "kept" if n_kept else "rejected",
                "clips_kept": n_kept,
                "clips_rejected": sum(1 for x in rej if x["clip_id"]),
                "reason": ""
                if n_kept
                else (f"{rej[0]['stage']}:{rej[0]['reason']}" if rej else "unaccounted"),
            }
        )
    write_parquet(join(cfg.output, "inputs.parquet"), pa.Table.from_pylist(ledger))
    reasons = collections.Counter(f"{r['stage']}:{r['reason']}" for r in rejects)
    modalities = collections.Counter(r["modality"] for r in kept)
    stats = {
        "inputs": len(plan),
        "inputs_kept": sum(1 for x in ledger if x["outcome"] == "kept"),
        "inputs_rejected": sum(1 for x in ledger if x["outcome"] == "rejected"),
        "inputs_unaccounted": sum(1 for x in ledger if x["reason"] == "unaccounted"),
        "clips_kept": len(kept),
        "clips_by_modality": dict(sorted(modalities.items())),
        "rejections": len(rejects),
        "rejections_by_stage_reason": dict(sorted(reasons.items())),
    }
    atomic_write_text(join(cfg.output, "stats.json"), json.dumps(stats, indent=1, sort_keys=True))
    return stats


def _remove_orphan_audio(kept: list[dict], dropped: list[dict]) -> None:
    """Dedup-dropped clips leave no WAV behind (exact duplicates share the kept clip's id and file)."""
    from fsspec.core import url_to_fs

    kept_ids = {r["clip_id"] for r in kept}
    for r in dropped:
        if r.get("audio_uri") and r["clip_id"] not in kept_ids:
            fs, path = url_to_fs(r["audio_uri"])
            if fs.exists(path):
                fs.rm(path)


def format_stats(stats: dict) -> str:
    lines = [
        f"inputs: {stats['inputs']}  kept: {stats['inputs_kept']}  rejected: {stats['inputs_rejected']}"
        f"  unaccounted: {stats['inputs_unaccounted']}",
        f"clips kept: {stats['clips_kept']}  "
        + "  ".join(f"{k}={v}" for k, v in stats["clips_by_modality"].items()),
        f"{'stage:reason':<36} {'count':>7}",
    ]
    lines += [f"{k:<36} {v:>7}" for k, v in stats["rejections_by_stage_reason"].items()]
    return "\n".join(lines)


def main(cfg: Config) -> dict:
    state = RunState(cfg.output)
    if (finished := state.done()) is not None:
        log.info("%s is already complete; nothing to do.\n%s", cfg.output, format_stats(finished))
        return finished
    if removed := state.remove_interrupted_writes():
        log.info("removed %d temporary files left by an interrupted run", len(removed))
    check_clip_weights(cfg.clip)  # refuse before any work if CLIP is on without loadable weights
    items = list_inputs(cfg.inputs, cfg.exclude)
    if not items:
        raise UserError(
            f"no input files found under {cfg.inputs}; check the URLs and the exclude patterns {cfg.exclude}"
        )
    save_config(cfg, cfg.output)
    plan = state.load_or_create_plan(items, cfg.partition_size)
    t0 = time.time()
    init_ray(cfg.ray)
    n = run_partitions(cfg, state, plan)
    stats = finalize(cfg, state, plan)
    stats["seconds"] = round(time.time() - t0, 1)
    state.mark_done(stats)
    log.info(
        "committed %d partitions in %.1fs; output %s\n%s",
        n,
        stats["seconds"],
        cfg.output,
        format_stats(stats),
    )
    return stats


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    job_entry(__file__)
