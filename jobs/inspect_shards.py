"""Inspect a token dataset offline: summary statistics, validation, decoded samples, an HTML report.

    videopoet inspect summary out/tokens                     # rows/tokens by modality, codebook usage, ...
    videopoet inspect validate out/tokens                    # exit 1 naming shard / row group / row of any problem
    videopoet inspect show out/tokens SAMPLE_ID              # -> out/tokens/inspect/SAMPLE_ID/{video.mp4,contact_sheet.png,...}
    videopoet inspect report out/tokens output=/tmp/report   # -> /tmp/report/index.html (open in a browser)
    python jobs/inspect_shards.py validate s3://bucket/tokens

`show` and `report` decode tokens with the tokenizer checkpoints recorded in the dataset metadata (their
sha256 must match), or with `video_checkpoint=` / `audio_checkpoint=` when they have moved.
The dataset is a local path or fsspec URL written by `videopoet tokenize` (docs/SHARDS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from videopoet.core.config import check
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_text, join
from videopoet.core.log import get_logger

DEFAULT_CONFIG = "configs/inspect.yaml"
POSITIONAL = ("command", "dataset", "sample_id")
log = get_logger("inspect")


@dataclass(kw_only=True)
class Config:
    command: Literal["summary", "validate", "show", "report"]
    """What to do: summary, validate, show (decode one sample) or report (static HTML page)."""
    dataset: str
    """Token dataset URL: the output folder of `videopoet tokenize` (holds manifest.json and shards/)."""
    sample_id: str | None = None
    """show: the sample to decode, its sample_id or a unique prefix of it."""
    output: str | None = None
    """Where show / report / summary write their files; null = <dataset>/inspect (report: <dataset>/inspect/report)."""
    video_checkpoint: str | None = None
    """MAGVIT-v2 checkpoint to decode with; null = the one recorded in the dataset metadata."""
    audio_checkpoint: str | None = None
    """SoundStream checkpoint to decode with; null = the one recorded in the dataset metadata."""
    device: str = "cpu"
    """Torch device for decoding (cpu, cuda)."""
    max_row_groups: int | None = None
    """summary / report: statistics over at most this many row groups spread over the dataset; null = all."""
    previews: int = 6
    """report: samples decoded into previews (video, image and audio taken in turn); 0 = none."""
    check_rows: bool = True
    """validate / report: check every row's tokens too (false: manifest, checksums, schemas, metadata only)."""
    max_issues: int = 100
    """validate: stop after this many problems."""

    def __post_init__(self):
        check(bool(self.dataset), "dataset", self.dataset, "a token dataset URL")
        check(
            self.command != "show" or bool(self.sample_id),
            "sample_id",
            self.sample_id,
            "a sample id for show: videopoet inspect show DATASET SAMPLE_ID",
        )
        check(
            self.max_row_groups is None or self.max_row_groups >= 1,
            "max_row_groups",
            self.max_row_groups,
            "null or >= 1",
        )
        check(self.previews >= 0, "previews", self.previews, ">= 0")
        check(self.max_issues >= 1, "max_issues", self.max_issues, ">= 1")


def main(cfg: Config) -> dict:
    from videopoet.pipelines import shard_report
    from videopoet.pipelines.shards import validate_dataset

    out = cfg.output or join(cfg.dataset, "inspect")
    if cfg.command == "summary":
        stats = shard_report.summarize(cfg.dataset, max_row_groups=cfg.max_row_groups)
        print(shard_report.format_summary(stats))
        if cfg.output:
            atomic_write_text(join(out, "summary.json"), shard_report.json_summary(stats))
        return {k: v for k, v in stats.items() if not k.startswith("_")}
    if cfg.command == "validate":
        issues = validate_dataset(cfg.dataset, max_issues=cfg.max_issues, check_rows=cfg.check_rows)
        if issues:
            shown = "\n".join(f"  {i}" for i in issues)
            raise UserError(
                f"{cfg.dataset} failed validation with {len(issues)} problem(s)"
                f"{' (stopped at max_issues)' if len(issues) >= cfg.max_issues else ''}:\n{shown}\n"
                "Re-tokenize the named shards (delete them and their _state/committed markers, then re-run "
                "`videopoet tokenize`), or restore them from a copy."
            )
        print(
            f"{cfg.dataset}: ok (manifest, checksums, schema, metadata{', every row' if cfg.check_rows else ''})"
        )
        return {"issues": 0}
    if cfg.command == "show":
        files = shard_report.show_sample(
            cfg.dataset,
            cfg.sample_id,
            out,
            video_checkpoint=cfg.video_checkpoint,
            audio_checkpoint=cfg.audio_checkpoint,
            device=cfg.device,
        )
        for kind, url in files.items():
            print(f"{kind}: {url}")
        return files
    url = shard_report.write_report(
        cfg.dataset,
        cfg.output or join(out, "report"),
        previews=cfg.previews,
        max_row_groups=cfg.max_row_groups,
        video_checkpoint=cfg.video_checkpoint,
        audio_checkpoint=cfg.audio_checkpoint,
        device=cfg.device,
        check_rows=cfg.check_rows,
    )
    print(f"report: {url}")
    return {"report": url}


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    job_entry(__file__)
