"""Scene-split speed and accuracy against baselines measured in the same run, on the same files and cores.

    uv run python benchmarks/scene_split.py                          # /tmp/sample_corpus, else tests/assets
    uv run python benchmarks/scene_split.py --corpus /tmp/sample_corpus --repeat 3
    uv run python benchmarks/scene_split.py --files a.mp4 b.mkv --no-cli

Build the sample corpus first with `uv run videopoet sample-data /tmp/sample_corpus`.

For every video it times, single-threaded (one decoder thread, so CPU-seconds are core-seconds):
- ours: `ProbeStage` + `SceneSplitStage` in-process (content hash, metadata, packet scan, decode at
  160 px, detector, per-clip scores), as a curation worker runs them;
- the raw decode limit: `ffmpeg -threads 1 -i f -vf scale=160:-2 -f null -` (when an ffmpeg binary is
  installed), and the PyAV decode + scale loop alone into a null sink;
- the stock `scenedetect -i f detect-content list-scenes -n` CLI (a new process per file, as it is used).
Throughput is source frames per CPU-second (= per core); the wall-clock speedup over the CLI includes its
start-up, which is part of what a user of the CLI pays per file. Known-cut videos (a `cuts.json` with
`videos: {name: {cut_frames}}`, or `NAME.json` with `cut_frames` beside NAME.mp4) give the cut F1 with
a 2-frame tolerance; cuts from ours and the CLI are matched in seconds with the same tolerance.
Targets: throughput >= 0.7 x the raw decode limit, >= 3x the CLI, F1 >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = Path("/tmp/sample_corpus")
TOLERANCE_FRAMES = 2


@dataclass
class Timing:
    wall: float = float("inf")
    cpu: float = float("inf")

    def keep_best(self, wall: float, cpu: float) -> None:
        self.wall, self.cpu = min(self.wall, wall), min(self.cpu, cpu)


@dataclass
class Result:
    path: Path
    fps: float
    frames: int = 0
    ours: Timing = field(default_factory=Timing)
    pyav: Timing = field(default_factory=Timing)
    ffmpeg: Timing = field(default_factory=Timing)
    cli: Timing = field(default_factory=Timing)
    cuts_s: list[float] = field(default_factory=list)
    cuts_frames: list[int] = field(default_factory=list)
    cli_cuts_s: list[float] | None = None
    cli_detect_s: float = float("inf")
    """The CLI's own 'Processed N frames in X seconds' (detection only, no start-up)."""
    truth: list[int] | None = None


def list_videos(args) -> list[Path]:
    if args.files:
        return [Path(f) for f in args.files]
    corpus = (
        Path(args.corpus)
        if args.corpus
        else (DEFAULT_CORPUS if DEFAULT_CORPUS.is_dir() else REPO / "tests" / "assets")
    )
    if not corpus.is_dir():
        sys.exit(
            f"corpus {corpus} does not exist; build it with `uv run videopoet sample-data {corpus}` or pass --files"
        )
    skip = {".txt", ".json", ".jsonl", ".yaml", ".py", ".md"}
    files = sorted(
        p
        for p in corpus.rglob("*")
        if p.is_file() and p.suffix.lower() not in skip and "broken" not in p.parts
    )
    return files


def known_cuts(files: list[Path]) -> dict[Path, list[int]]:
    truth: dict[Path, list[int]] = {}
    for f in files:
        side = f.with_suffix(".json")
        if side.is_file():
            data = json.loads(side.read_text())
            if "cut_frames" in data:
                truth[f] = [int(c) for c in data["cut_frames"]]
        table = f.parent / "cuts.json"
        if table.is_file():
            videos = json.loads(table.read_text()).get("videos", {})
            if f.name in videos:
                truth[f] = [int(c) for c in videos[f.name]["cut_frames"]]
    return truth


def cpu_now() -> float:
    return time.process_time()


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_ours(path: Path, cfg) -> tuple[float, float, list[dict]]:
    from videopoet.pipelines.base import run_local
    from videopoet.pipelines.probe import ProbeStage
    from videopoet.pipelines.scenes import SceneSplitStage

    t, c = time.perf_counter(), cpu_now()
    rows = run_local([ProbeStage(), SceneSplitStage(cfg=cfg)], [{"uri": str(path), "input_id": "b"}])
    return time.perf_counter() - t, cpu_now() - c, rows


def run_pyav(path: Path, width: int, height: int) -> tuple[float, float, int]:
    """The decode + scale loop alone (same scaler and size as ours), frames dropped on the floor."""
    from videopoet.pipelines.media import iter_video_frames

    t, c = time.perf_counter(), cpu_now()
    n = sum(1 for _ in iter_video_frames(str(path), width=width, height=height, fmt="yuv420p", threads=1))
    return time.perf_counter() - t, cpu_now() - c, n


def run_cmd(cmd: list[str]) -> tuple[float, float, str]:
    t, c = time.perf_counter(), children_cpu()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall, cpu = time.perf_counter() - t, children_cpu() - c
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-500:]}")
    return wall, cpu, proc.stdout + proc.stderr


def ffmpeg_cmd(ffmpeg: str, path: Path, width: int) -> list[str]:
    """Decode + scale to the analysis width into a null sink, one thread, timing its own loop."""
    args = "-hide_banner -nostats -benchmark -threads 1 -i {} -vf scale={}:-2 -filter_threads 1 -f null -"
    return [ffmpeg, *(str(path) if a == "{}" else a.format(width) for a in args.split())]


CLI_ROW = re.compile(r"^\s*\|\s*(\d+)\s*\|\s*(\d+)\s*\|\s*([\d:.]+)\s*\|")


def parse_cli(text: str) -> list[float]:
    """Scene start times after the first (the cuts), from `list-scenes` output."""
    starts = []
    for line in text.splitlines():
        m = CLI_ROW.match(line)
        if m:
            h, mi, s = m.group(3).split(":")
            starts.append(int(h) * 3600 + int(mi) * 60 + float(s))
    return starts[1:]


def match(found: list[float], truth: list[float], tol: float) -> int:
    used: set[int] = set()
    hits = 0
    for t in truth:
        for i, f in enumerate(found):
            if i not in used and abs(f - t) <= tol:
                used.add(i)
                hits += 1
                break
    return hits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", help="folder of media (default /tmp/sample_corpus, else tests/assets)")
    ap.add_argument("--files", nargs="+", help="explicit media files")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept")
    ap.add_argument("--no-cli", action="store_true", help="skip the scenedetect CLI baseline")
    ap.add_argument("--no-ffmpeg", action="store_true", help="skip the ffmpeg baseline")
    args = ap.parse_args()

    import av

    from videopoet.pipelines.base import run_local
    from videopoet.pipelines.media import analysis_size
    from videopoet.pipelines.probe import ProbeStage
    from videopoet.pipelines.scenes import SceneConfig

    cfg = SceneConfig(decode_threads=1, max_clip_s=1e6)  # no window splits: clip boundaries are the cuts
    files = list_videos(args)
    probed = run_local([ProbeStage()], [{"uri": str(f), "input_id": str(i)} for i, f in enumerate(files)])
    videos = [(Path(r["uri"]), r) for r in probed if r.get("status") == "ok" and r.get("modality") == "video"]
    truth = known_cuts([v for v, _ in videos])
    ffmpeg = None if args.no_ffmpeg else shutil.which("ffmpeg")
    cli = (
        None
        if args.no_cli
        else shutil.which("scenedetect") or str(Path(sys.executable).parent / "scenedetect")
    )
    if cli and not Path(cli).exists():
        cli = None
    print(
        f"{len(videos)} videos ({len(truth)} with known cuts); ffmpeg: {ffmpeg or 'not installed'}; "
        f"scenedetect CLI: {cli or 'skipped'}; PyAV {av.__version__}; best of {args.repeat}",
        flush=True,
    )

    if videos:  # warm-up: imports and first-call set-up are not part of any file's time
        run_ours(videos[0][0], cfg)
    results: list[Result] = []
    for path, row in videos:
        res = Result(path=path, fps=float(row["fps"]), truth=truth.get(path))
        w, h = analysis_size(int(row["width"]), int(row["height"]), cfg.analysis_width)
        for _ in range(args.repeat):
            wall, cpu, rows = run_ours(path, cfg)
            res.ours.keep_best(wall, cpu)
            wall, cpu, res.frames = run_pyav(path, w, h)
            res.pyav.keep_best(wall, cpu)
            if ffmpeg:  # -benchmark: CPU of the decode+scale loop itself, without process start-up
                _, _, out = run_cmd(ffmpeg_cmd(ffmpeg, path, w))
                m = re.search(r"bench: utime=([\d.]+)s stime=([\d.]+)s rtime=([\d.]+)s", out)
                res.ffmpeg.keep_best(float(m.group(3)), float(m.group(1)) + float(m.group(2)))
        clips = [r for r in rows if r.get("clip_index") is not None]
        res.cuts_frames = [int(r["start_frame"]) for r in clips if int(r["clip_index"]) > 0]
        res.cuts_s = [float(r["start_s"]) for r in clips if int(r["clip_index"]) > 0]
        if cli:
            for _ in range(min(args.repeat, 2)):  # seconds per run: two is enough to skip a cold start
                wall, cpu, out = run_cmd([cli, "-i", str(path), "detect-content", "list-scenes", "-n"])
                res.cli.keep_best(wall, cpu)
                m = re.search(r"Processed (\d+) frames in [\d.]+ seconds \(average ([\d.]+) FPS\)", out)
                if m:
                    res.cli_detect_s = min(res.cli_detect_s, int(m.group(1)) / float(m.group(2)))
            res.cli_cuts_s = parse_cli(out)
        results.append(res)
        print(
            f"  {path.name}: {res.frames} frames, ours {res.ours.cpu:.2f} cpu-s, raw {res.pyav.cpu:.2f}"
            + (f", ffmpeg {res.ffmpeg.cpu:.2f}" if ffmpeg else "")
            + (f", cli {res.cli.wall:.2f} wall-s" if cli else ""),
            flush=True,
        )
    report(results, bool(ffmpeg), bool(cli))
    return 0


def report(results: list[Result], ffmpeg: bool, cli: bool) -> None:
    print()
    head = (
        f"{'video':34} {'frames':>6} {'ours f/cpu-s':>12} {'pyav raw':>9} {'ffmpeg raw':>10} {'ours/raw':>8}"
    )
    head += f" {'cli wall-s':>10} {'ours wall-s':>11} {'speedup':>7} {'cuts ours|cli':>14}" if cli else ""
    print(head)
    print("-" * len(head))
    tot = {
        "frames": 0,
        "ours": 0.0,
        "pyav": 0.0,
        "ffmpeg": 0.0,
        "cli_wall": 0.0,
        "ours_wall": 0.0,
        "cli_detect": 0.0,
    }
    agree = total_cmp = 0
    for r in results:
        raw = r.ffmpeg.cpu if ffmpeg else r.pyav.cpu
        line = (
            f"{r.path.name[:34]:34} {r.frames:6d} {r.frames / r.ours.cpu:12.0f} {r.frames / r.pyav.cpu:9.0f} "
            f"{(r.frames / r.ffmpeg.cpu) if ffmpeg else float('nan'):10.0f} {raw / r.ours.cpu:8.2f}"
        )
        if cli:
            tol = TOLERANCE_FRAMES / r.fps
            same = r.cli_cuts_s is not None and len(r.cli_cuts_s) == len(r.cuts_s) == match(
                r.cuts_s, r.cli_cuts_s, tol
            )
            agree += same
            total_cmp += 1
            line += (
                f" {r.cli.wall:10.2f} {r.ours.wall:11.2f} {r.cli.wall / r.ours.wall:6.1f}x "
                f"{len(r.cuts_s):>6}|{len(r.cli_cuts_s or []):<3}{'=' if same else '!='}"
            )
            tot["cli_wall"] += r.cli.wall
            tot["cli_detect"] += r.cli_detect_s
            tot["ours_wall"] += r.ours.wall
        print(line)
        tot["frames"] += r.frames
        tot["ours"] += r.ours.cpu
        tot["pyav"] += r.pyav.cpu
        tot["ffmpeg"] += r.ffmpeg.cpu if ffmpeg else 0.0
    print("-" * len(head))
    f = tot["frames"]
    print(
        f"throughput, frames per CPU-second (= per core), all files: ours {f / tot['ours']:.0f}, "
        f"PyAV decode+scale {f / tot['pyav']:.0f}"
        + (f", ffmpeg decode+scale {f / tot['ffmpeg']:.0f}" if ffmpeg else "")
    )
    print(
        f"ratio ours / raw decode limit: {tot['pyav'] / tot['ours']:.2f} vs PyAV loop"
        + (f", {tot['ffmpeg'] / tot['ours']:.2f} vs ffmpeg" if ffmpeg else "")
        + "   (target >= 0.7)"
    )
    if cli:
        print(
            f"speedup over the scenedetect CLI: {tot['cli_wall'] / tot['ours_wall']:.1f}x wall per file incl. its"
            f" start-up (target >= 3x); {tot['cli_detect'] / tot['ours_wall']:.1f}x against its own detection time"
            " alone (which has no hashing, probing or clip scores)"
        )
        print(
            f"cut lists of ours and the CLI agree within {TOLERANCE_FRAMES} frames on {agree}/{total_cmp} videos"
        )
    known = [r for r in results if r.truth is not None]
    if known:
        tp = fp = fn = 0
        ctp = cfp = cfn = 0
        for r in known:
            tol = TOLERANCE_FRAMES + 1e-9
            hits = match([float(c) for c in r.cuts_frames], [float(c) for c in r.truth], tol)
            tp, fp, fn = tp + hits, fp + len(r.cuts_frames) - hits, fn + len(r.truth) - hits
            if r.cli_cuts_s is not None:
                truth_s = [c / r.fps for c in r.truth]
                chits = match(r.cli_cuts_s, truth_s, TOLERANCE_FRAMES / r.fps + 1e-9)
                ctp, cfp, cfn = ctp + chits, cfp + len(r.cli_cuts_s) - chits, cfn + len(r.truth) - chits
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        line = f"known-cut F1 (+-{TOLERANCE_FRAMES} frames) on {len(known)} videos: ours {f1:.3f} (tp {tp}, fp {fp}, fn {fn})"
        if cli:
            line += f"; CLI {2 * ctp / max(1, 2 * ctp + cfp + cfn):.3f} (tp {ctp}, fp {cfp}, fn {cfn})"
        print(line + "   (target >= 0.95)")


if __name__ == "__main__":
    sys.exit(main())
