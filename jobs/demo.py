"""The whole system on one machine, no GPU: sample corpus -> curation -> token shards -> LM (+ SR) -> videos -> report.

    videopoet demo out/demo                                          # ~15 min on 2 CPU cores; re-run to resume
    videopoet demo out/demo train_lm.extra='[train.max_steps=200]'  # train longer
    videopoet demo out/demo corpus='[/data/my_videos]'               # curate your own media, not the sample
    videopoet demo out/demo generate.prompt="a diver swims underwater"
    python jobs/demo.py out/demo --config configs/demo.yaml

Each step is another job's `main(config)`, run in this process (the trainers in a child process each:
DeepSpeed keeps process-wide state), with that job's own config file (`configs/<job>.yaml`, or the one
named in `<step>.config`), then the demo's overrides (`<step>.overrides`), then yours (`<step>.extra`,
e.g. `train_lm.extra='[train.max_steps=200]'`). The demo sets only the keys that connect the steps
(inputs, outputs, tokenizer checkpoints). Under OUT:

    sample/         1. sample-data  real media from Debian packages (skipped when `corpus` is given)
    curated/        2. curate       clips/, rejects/, stats.json (CLIP scoring off: no weights offline)
    tokens/         3. tokenize     LM token shards (MAGVIT-v2 video/image, SoundStream audio, MiniLM text)
    tokens_sr/      4. tokenize     a few video clips at 2x resolution too: the super-resolution pairs
    report/shards/  5. inspect      the shard report: statistics, validation, decoded previews
    lm/             6. train-lm     the debug-size LM (DeepSpeed, one CPU process), metrics.jsonl, export
    sr/             7. train-sr     the debug-size super-resolution stage
    generated/      8. generate     one MP4 per task (text-to-video, image-to-video, video-to-audio, ...)
    report/         9. report       index.html + the MP4s beside it: curation, shards, training curves,
                                    generations; open it in a browser (self-contained: copy the folder)
    configs/                        the resolved configs the trainers ran with
    demo_state.json                 which steps finished, in how many seconds

Every step resumes: a step that finished is skipped on a re-run (the curate and tokenize jobs' done
markers, the trainers' final export, an MP4 newer than the LM it came from), a step interrupted midway
continues where it stopped (committed partitions and shards, the last training checkpoint), and the
report is rebuilt each run. Delete a step's folder to redo it. The chain as cluster jobs (Ray, DeepSpeed
launchers) is in the README under "Running on a Ray cluster".

What to expect: a debug-size model trained for minutes on ~100 windows on a CPU learns the token
statistics, not the content; the generations show the system works end to end, not model quality.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from videopoet.core.config import ConfigError, check, dump_yaml, load_config, save_config
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_text, join
from videopoet.core.log import get_logger

DEFAULT_CONFIG = "configs/demo.yaml"
POSITIONAL = ("out",)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE_FILE = "demo_state.json"
log = get_logger("videopoet.demo")

GENERATION_TASKS = (
    "text_to_video",
    "text_to_image",
    "unconditional",
    "image_to_video",
    "frame_prediction",
    "inpainting",
    "outpainting",
    "audio_to_video",
    "video_to_audio",
    "audio_video_continuation",
)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
"""Image files generate's image input reads (Pillow); a one-frame video is an image clip too, but not one of these."""
VIDEO_INPUT_TASKS = (
    "frame_prediction",
    "inpainting",
    "outpainting",
    "video_to_audio",
    "audio_video_continuation",
)


@dataclass(kw_only=True)
class JobStep:
    """One job of the chain: which config file it starts from and what the demo changes in it."""

    enabled: bool = True
    """Run this step (false: skip it; later steps that need its output then fail or are skipped too)."""
    config: str | None = None
    """The job's YAML config (paths relative to the working directory or the repository). null: the job's default under configs/."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides of the job's config that size it for the demo, applied on top of `config`."""
    extra: list[str] = field(default_factory=list)
    """More key=value overrides, applied after `overrides` (set these on the command line to keep the demo's own). The demo then sets the keys that connect the steps."""

    def __post_init__(self) -> None:
        for key in ("overrides", "extra"):
            for item in getattr(self, key):
                check("=" in item, key, item, "key=value items, e.g. train.max_steps=100")


@dataclass(kw_only=True)
class TokenizeStep(JobStep):
    threads: int | None = None
    """Torch threads of each tokenizer worker when the job's pool.cpus is not overridden. null: all cores, at most 4 (one multi-threaded worker encodes faster than one single-threaded worker per core on a small machine)."""
    sr_clips: int = 4
    """Video clips also tokenized at 2x resolution into tokens_sr/ for the super-resolution stage (only when train-sr runs). Encoding 256x256 windows is the slowest part on a CPU: keep it small."""
    sr_overrides: list[str] = field(default_factory=list)
    """key=value overrides of the tokenize config of tokens_sr/ only (applied last)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.threads is None or self.threads >= 1, "threads", self.threads, "null or >= 1")
        check(self.sr_clips >= 0, "sr_clips", self.sr_clips, ">= 0")
        for item in self.sr_overrides:
            check("=" in item, "sr_overrides", item, "key=value items")


@dataclass(kw_only=True)
class GenerateStep(JobStep):
    tasks: list[str] = field(default_factory=lambda: ["text_to_video", "image_to_video", "video_to_audio"])
    """Generation tasks, one MP4 each (text_to_image: a PNG). See `videopoet generate --help`."""
    prompt: str | None = None
    """Caption of the text tasks. null: the caption of a curated video clip (one the LM trained on)."""
    image: str | None = None
    """Input image of image_to_video. null: the first curated image."""
    video: str | None = None
    """Input video of the video tasks (video_to_audio, frame_prediction, ...). null: the first curated video clip long enough for a window (one with audio first)."""
    audio: str | None = None
    """Input audio of audio_to_video. null: the first curated audio long enough for a window."""
    sr_tasks: list[str] = field(default_factory=lambda: ["text_to_video"])
    """Tasks whose video also goes through the trained super-resolution stage (when train-sr ran and generate supports it)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("tasks", "sr_tasks"):
            bad = [t for t in getattr(self, key) if t not in GENERATION_TASKS]
            check(not bad, key, getattr(self, key), f"tasks among {', '.join(GENERATION_TASKS)}")


@dataclass(kw_only=True)
class Config:
    out: str
    """Demo folder (local path): every step writes under it; the report is OUT/report/index.html."""
    corpus: list[str] | None = None
    """Media to curate instead of the sample corpus (directories, globs, files, manifests; see `videopoet curate --help`). null: build the sample corpus in OUT/sample."""
    video_tokenizer: str = "checkpoints/magvit2_small"
    """MAGVIT-v2 checkpoint folder (relative paths: from the working directory, then the repository)."""
    audio_tokenizer: str = "checkpoints/soundstream_small"
    """SoundStream checkpoint folder (relative paths as for video_tokenizer)."""
    sample_data: JobStep = field(default_factory=JobStep)
    """Step 1, `videopoet sample-data OUT/sample`."""
    curate: JobStep = field(default_factory=lambda: JobStep(overrides=["clip.enabled=false"]))
    """Step 2, `videopoet curate` (CLIP scoring needs weights you provide: clip.weights=PATH)."""
    tokenize: TokenizeStep = field(
        default_factory=lambda: TokenizeStep(
            overrides=[
                "modalities=[video, image]",
                "window.max_windows_per_clip=2",
                "sr.enabled=false",
                "pool.pad_batches=false",
                "pool.memory_mb=3500",
                "batch_windows=4",
            ]
        )
    )
    """Steps 3 and 4, `videopoet tokenize` into tokens/ and tokens_sr/."""
    inspect: JobStep = field(default_factory=lambda: JobStep(overrides=["previews=3"]))
    """Step 5, `videopoet inspect report` of tokens/ into report/shards/."""
    train_lm: JobStep = field(
        default_factory=lambda: JobStep(
            config="configs/train_lm_debug.yaml",
            overrides=[
                "model.visual_bits=null",
                "model.audio_levels=null",
                "model.audio_codebook_size=null",
                "model.overrides=[max_seq_len=2048]",
                "train.max_steps=40",
                "train.micro_batch=1",
                "train.warmup_steps=4",
                "train.activation_checkpointing=false",
                "checkpoint.every=10",
                "checkpoint.keep=1",
            ],
        )
    )
    """Step 6, `videopoet train-lm`: the debug LM, vocabulary from the shards (the committed tokenizers)."""
    train_sr: JobStep = field(
        default_factory=lambda: JobStep(
            config="configs/train_sr_debug.yaml",
            overrides=["train.max_steps=30", "checkpoint.every=10", "checkpoint.keep=1"],
        )
    )
    """Step 7, `videopoet train-sr` on tokens_sr/ (runs when this checkout has the train-sr job)."""
    generate: GenerateStep = field(default_factory=GenerateStep)
    """Step 8, `videopoet generate`, once per task."""

    def __post_init__(self) -> None:
        check(
            bool(self.out) and "://" not in self.out.removeprefix("file://"),
            "out",
            self.out,
            "a local folder path",
        )
        check(self.corpus is None or len(self.corpus) > 0, "corpus", self.corpus, "null or a non-empty list")


# ---------------------------------------------------------------------------------------------------------
# paths and step configs


class Paths:
    """Where each step writes under the demo folder."""

    def __init__(self, out: str):
        self.out = out
        self.sample, self.curated = join(out, "sample"), join(out, "curated")
        self.tokens, self.tokens_sr = join(out, "tokens"), join(out, "tokens_sr")
        self.sr_clips = join(out, "sr_clips.parquet")
        self.lm, self.sr, self.generated = join(out, "lm"), join(out, "sr"), join(out, "generated")
        self.report = join(out, "report")
        self.shard_report = join(self.report, "shards")
        self.state = join(out, STATE_FILE)


def find_path(path: str) -> str:
    """A path as given when it exists (or is a URL), else relative to the repository root."""
    if os.path.isabs(path) or "://" in path or os.path.exists(path):
        return path
    alt = os.path.join(REPO_ROOT, path)
    return alt if os.path.exists(alt) else path


def job_module(name: str):
    return importlib.import_module(f"videopoet.jobs.{name}")


def sr_available() -> bool:
    """Whether this checkout has the super-resolution trainer (`videopoet train-sr`)."""
    return importlib.util.find_spec("videopoet.jobs.train_sr") is not None


def generate_supports_sr() -> bool:
    from videopoet.jobs import generate

    return any(f.name == "sr" for f in dataclasses.fields(generate.Config))


def step_config(
    module: str, step: JobStep, wiring: dict[str, Any], demo: list[str] = (), last: list[str] = ()
) -> Any:
    """The config of one step: its file, the step's `overrides`, the demo's own keys for this machine or
    variant (`demo`), the step's `extra`, `last`, then the keys that connect the steps (`wiring`)."""
    mod = job_module(module)
    path = find_path(step.config) if step.config else None
    if path is None and getattr(mod, "DEFAULT_CONFIG", None):
        path = os.path.join(REPO_ROOT, mod.DEFAULT_CONFIG)
    overrides = [*step.overrides, *demo, *step.extra, *last]
    overrides += [f"{k}={json.dumps(v)}" for k, v in wiring.items()]
    try:
        return load_config(mod.Config, path, overrides)
    except ConfigError as e:
        raise ConfigError(f"{e} (in the config of the demo's {module} step)") from None


def _has_override(overrides: list[str], key: str) -> bool:
    return any(o.partition("=")[0].strip() == key for o in overrides)


def tokenize_resources(step: TokenizeStep) -> list[str]:
    """Threads per tokenizer worker on this machine (unless the step's overrides set them)."""
    from videopoet.core.ray_runtime import local_cpu_count

    if _has_override(step.overrides + step.extra, "pool.cpus"):
        return []
    cores = local_cpu_count()
    threads = step.threads or min(4, cores)
    out = [f"pool.cpus={threads}"]
    if not _has_override(step.overrides + step.extra, "ray.num_cpus"):
        # a worker of `threads` CPUs plus one decode task must fit, or decoding never gets scheduled
        out.append(f"ray.num_cpus={max(cores, threads + 1)}")
    return out


# ---------------------------------------------------------------------------------------------------------
# the step runner: banners, timing, skip-when-done, demo_state.json


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class Step:
    name: str
    """Key in demo_state.json and in the report."""
    title: str
    """What the step does, for the banner."""
    output: str
    """Where it writes (shown in the banner and linked in the report)."""
    run: Callable[[], dict | None]
    """Does the work; returns a small JSON-able summary."""
    done: Callable[[], bool] = lambda: False
    """True when its output is complete already (then it is skipped)."""
    skip_reason: str | None = None
    """Set when the step is off in this run (disabled, or its job is missing): it is listed but not run."""


class Runner:
    """Runs steps in order with banners and elapsed times; records finished steps in demo_state.json."""

    def __init__(self, state_url: str, total: int):
        self.state_url, self.total, self.t0 = state_url, total, time.time()
        self.index = 0
        try:
            with open(state_url) as f:
                self.state = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            self.state = {"steps": {}}

    def _save(self) -> None:
        atomic_write_text(self.state_url, json.dumps(self.state, indent=1, sort_keys=True) + "\n")

    def elapsed(self) -> str:
        return fmt_seconds(time.time() - self.t0)

    def __call__(self, step: Step) -> dict | None:
        self.index += 1
        head = f"[{self.index}/{self.total}] {step.name}"
        rec = self.state["steps"].get(step.name)
        if step.skip_reason:
            log.info(">>> %s: skipped: %s", head, step.skip_reason)
            self.state["steps"][step.name] = {"status": "off", "reason": step.skip_reason}
            self._save()
            return None
        if step.done():
            earlier = f" in {fmt_seconds(rec['seconds'])}" if rec and rec.get("seconds") is not None else ""
            log.info(">>> %s: already done%s -> %s (skipping)", head, earlier, step.output)
            if rec is None or rec.get("status") != "done":
                self.state["steps"][step.name] = {"status": "done", "seconds": None, "output": step.output}
                self._save()
            self.state["steps"][step.name]["this_run"] = "skipped"
            return self.state["steps"][step.name].get("result")
        # time already spent on this step by runs that were interrupted or failed midway
        before = float(rec.get("partial_s", 0.0)) if rec and rec.get("status") == "interrupted" else 0.0
        resumed = f", resuming after {fmt_seconds(before)} in earlier runs" if before else ""
        log.info(
            ">>> %s: %s -> %s   (demo time %s%s)", head, step.title, step.output, self.elapsed(), resumed
        )
        t = time.time()
        try:
            result = step.run()
        except BaseException:
            spent = round(before + time.time() - t, 1)
            self.state["steps"][step.name] = {
                "status": "interrupted",
                "partial_s": spent,
                "output": step.output,
            }
            self._save()
            raise
        seconds = round(before + time.time() - t, 1)
        self.state["steps"][step.name] = {
            "status": "done",
            "seconds": seconds,
            "output": step.output,
            "result": result,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self._save()
        self.state["steps"][step.name]["this_run"] = "ran"
        log.info(">>> %s: done in %s   (demo time %s)", head, fmt_seconds(seconds), self.elapsed())
        return result


@contextlib.contextmanager
def heartbeat(what: str, every_s: float = 30.0) -> Iterator[None]:
    """Log `what ... (still running, 1m30s)` every `every_s` seconds while the block runs (for steps whose
    job prints nothing for minutes on a CPU, e.g. sampling a video's tokens)."""
    done = threading.Event()
    t0 = time.time()

    def beat() -> None:
        while not done.wait(every_s):
            log.info("%s (still running, %s)", what, fmt_seconds(time.time() - t0))

    th = threading.Thread(target=beat, daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join()


# ---------------------------------------------------------------------------------------------------------
# choosing generation inputs from the curated clips


def window_seconds(tok_cfg) -> float:
    return tok_cfg.window.frames / tok_cfg.window.fps


def pick_inputs(clips: list[dict], seconds: float) -> dict[str, str | None]:
    """Default generation inputs from curated clip rows: a caption, an image, a video, an audio file.

    Videos and audio are read from the start of their file, so only clips starting at 0 s and lasting at
    least a window (`seconds`) qualify; among videos, ones with audio come first (video_to_audio then has
    the original sound to compare with).
    """
    rows = sorted(clips, key=lambda r: (r["uri"], r.get("start_s") or 0.0))
    videos = [r for r in rows if r["modality"] == "video"]
    long_enough = [
        r
        for r in videos
        if (r.get("start_s") or 0.0) <= 0.05
        and (r.get("end_s") or 0.0) - (r.get("start_s") or 0.0) >= seconds
    ]
    long_enough.sort(key=lambda r: (not r.get("audio_uri"), r["uri"]))
    captioned = [r for r in videos if r.get("caption")] or [r for r in rows if r.get("caption")]
    images = [r for r in rows if r["modality"] == "image" and r["uri"].lower().endswith(IMAGE_SUFFIXES)]
    audio = [
        r
        for r in rows
        if r.get("audio_uri") and (r.get("end_s") or 0.0) - (r.get("start_s") or 0.0) >= seconds
    ]
    audio.sort(key=lambda r: (r["modality"] != "audio", r["uri"]))
    return {
        "prompt": captioned[0]["caption"] if captioned else None,
        "image": _local(images[0]["uri"]) if images else None,
        "video": _local(long_enough[0]["uri"]) if long_enough else None,
        "audio": _local(audio[0]["audio_uri"]) if audio else None,
    }


def _local(uri: str) -> str:
    return uri.removeprefix("file://")


def _task_input(task: str) -> str | None:
    """The input a generation task needs: prompt, image, video, audio, or None."""
    if task in VIDEO_INPUT_TASKS:
        return "video"
    return {
        "text_to_video": "prompt",
        "text_to_image": "prompt",
        "image_to_video": "image",
        "audio_to_video": "audio",
    }.get(task)


def pick_sr_clips(clips: list[dict], n: int, min_side: int, seconds: float) -> list[dict]:
    """The first `n` video clips (by uri) at least a window long and large enough for a super-resolution target."""
    rows = sorted(clips, key=lambda r: (r["uri"], r.get("start_s") or 0.0))
    return [
        r
        for r in rows
        if r["modality"] == "video"
        and min(r.get("width") or 0, r.get("height") or 0) >= min_side
        and (r.get("end_s") or 0.0) - (r.get("start_s") or 0.0) >= seconds
    ][:n]


# ---------------------------------------------------------------------------------------------------------
# steps


def _export_step(run_dir: str) -> int | None:
    """The step of a trainer's final export (model.safetensors + config.json) in run_dir, or None."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            step = json.load(f).get("step")
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
        return None
    return step if os.path.isfile(os.path.join(run_dir, "model.safetensors")) else None


def _run_done(url: str) -> bool:
    from videopoet.pipelines.commit import RunState

    return RunState(url).done() is not None


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return 0.0


class Demo:
    """The chain's step configs (built and validated before any work) and the steps themselves."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.p = Paths(cfg.out.removeprefix("file://").rstrip("/"))
        self.video_ckpt = find_path(cfg.video_tokenizer)
        self.audio_ckpt = find_path(cfg.audio_tokenizer)
        for what, path in (("video_tokenizer", self.video_ckpt), ("audio_tokenizer", self.audio_ckpt)):
            if not os.path.isfile(os.path.join(path, "model.safetensors")):
                raise UserError(
                    f"{what}={path} holds no model.safetensors: point it at a tokenizer checkpoint folder "
                    "(the repository ships checkpoints/magvit2_small and checkpoints/soundstream_small)"
                )
        p = self.p
        self.inputs = cfg.corpus or [join(p.sample, "manifest.jsonl")]
        self.sample_cfg = step_config("sample_data", cfg.sample_data, {"out": p.sample})
        self.curate_cfg = step_config("curate", cfg.curate, {"inputs": self.inputs, "output": p.curated})
        tok_wiring = {
            "input": p.curated,
            "output": p.tokens,
            "video.checkpoint": self.video_ckpt,
            "audio.checkpoint": self.audio_ckpt,
        }
        res = tokenize_resources(cfg.tokenize)
        self.tok_cfg = step_config("tokenize_shards", cfg.tokenize, tok_wiring, res)
        self.sr_on, self.sr_reason = self._sr_switch()
        sr_wiring = dict(tok_wiring, input=p.sr_clips, output=p.tokens_sr)
        sr_keys = [
            *res,
            "modalities=[video]",
            "window.max_windows_per_clip=1",
            "sr.enabled=true",
            "audio.enabled=false",
        ]
        self.tok_sr_cfg = step_config(
            "tokenize_shards", cfg.tokenize, sr_wiring, sr_keys, cfg.tokenize.sr_overrides
        )
        self.inspect_cfg = step_config(
            "inspect_shards",
            cfg.inspect,
            {"command": "report", "dataset": p.tokens, "output": p.shard_report},
        )
        self.lm_cfg = step_config("train_lm", cfg.train_lm, {"data.url": p.tokens, "output": p.lm})
        self.sr_cfg = (
            step_config("train_sr", cfg.train_sr, {"data.url": p.tokens_sr, "output": p.sr})
            if sr_available()
            else None
        )
        # generate configs are built once the inputs are known (after curation); check the overrides now
        step_config("generate", cfg.generate, {"checkpoint": p.lm, "output": join(p.generated, "check.mp4")})

    def _sr_switch(self) -> tuple[bool, str | None]:
        c = self.cfg
        if not c.train_sr.enabled:
            return False, "train_sr.enabled=false"
        if not sr_available():
            return False, "this checkout has no train-sr job"
        if c.tokenize.sr_clips == 0:
            return False, "tokenize.sr_clips=0"
        return True, None

    # -- steps --------------------------------------------------------------------------------------------
    def steps(self) -> list[Step]:
        c, p = self.cfg, self.p
        off = lambda on, why: None if on else why  # noqa: E731
        return [
            Step(
                "sample-data",
                "build the real sample corpus from Debian packages",
                p.sample,
                self.run_sample,
                done=lambda: (
                    self._recorded("sample-data") and os.path.isfile(join(p.sample, "manifest.jsonl"))
                ),
                skip_reason="corpus is set"
                if c.corpus
                else off(c.sample_data.enabled, "sample_data.enabled=false"),
            ),
            Step(
                "curate",
                "probe, filter, split scenes, extract audio, dedup (Ray Data)",
                p.curated,
                lambda: self.run_ray_job("curate", self.curate_cfg),
                done=lambda: _run_done(p.curated),
                skip_reason=off(c.curate.enabled, "curate.enabled=false"),
            ),
            Step(
                "tokenize",
                "MAGVIT-v2 video/image, SoundStream audio, MiniLM captions -> token shards (Ray Data)",
                p.tokens,
                lambda: self.run_ray_job("tokenize_shards", self.tok_cfg),
                done=lambda: _run_done(p.tokens),
                skip_reason=off(c.tokenize.enabled, "tokenize.enabled=false"),
            ),
            Step(
                "tokenize-sr",
                f"{c.tokenize.sr_clips} video clips at 2x resolution -> super-resolution pairs",
                p.tokens_sr,
                self.run_tokenize_sr,
                done=lambda: _run_done(p.tokens_sr),
                skip_reason=self.sr_reason or off(c.tokenize.enabled, "tokenize.enabled=false"),
            ),
            Step(
                "inspect",
                "validate the shards, summary charts, decoded previews",
                join(p.shard_report, "index.html"),
                self.run_inspect,
                done=lambda: self._recorded("inspect") and os.path.isfile(join(p.shard_report, "index.html")),
                skip_reason=off(c.inspect.enabled, "inspect.enabled=false"),
            ),
            Step(
                "train-lm",
                f"the {self.lm_cfg.model.size} LM for {self.lm_cfg.train.max_steps} steps (DeepSpeed, "
                f"{'CUDA' if _cuda() else 'CPU'})",
                p.lm,
                lambda: self.run_trainer("train_lm", self.lm_cfg),
                done=lambda: _export_step(p.lm) == self.lm_cfg.train.max_steps,
                skip_reason=off(c.train_lm.enabled, "train_lm.enabled=false"),
            ),
            Step(
                "train-sr",
                f"the super-resolution stage for {self.sr_cfg.train.max_steps if self.sr_cfg else 0} steps",
                p.sr,
                lambda: self.run_trainer("train_sr", self.sr_cfg),
                done=lambda: self.sr_cfg is not None and _export_step(p.sr) == self.sr_cfg.train.max_steps,
                skip_reason=self.sr_reason,
            ),
            Step(
                "generate",
                ", ".join(c.generate.tasks),
                p.generated,
                self.run_generate,
                done=self.generations_done,
                skip_reason=off(c.generate.enabled and bool(c.generate.tasks), "generate.enabled=false"),
            ),
        ]

    def _recorded(self, name: str) -> bool:
        try:
            with open(self.p.state) as f:
                return json.load(f)["steps"].get(name, {}).get("status") == "done"
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return False

    def run_sample(self) -> dict:
        res = job_module("sample_data").main(self.sample_cfg)
        return {k: res[k] for k in ("files", "bytes") if k in res}

    def run_ray_job(self, module: str, cfg) -> dict:
        import ray

        from videopoet.core.ray_runtime import shutdown_ray

        ours = not ray.is_initialized()
        try:
            res = job_module(module).main(cfg)
        finally:
            if ours:  # each Ray step sizes its own local Ray; the trainers after them need the memory back
                shutdown_ray()
        return {k: v for k, v in res.items() if k != "this_run"}

    def run_tokenize_sr(self) -> dict:
        import pyarrow as pa

        from videopoet.jobs.tokenize_shards import read_clips
        from videopoet.pipelines.commit import write_parquet

        url = self.tok_sr_cfg.input
        if not os.path.isfile(url):  # chosen once: a resumed run must see the same clips
            side = min(min(s) for s in self.tok_sr_cfg.window.sizes) * self.tok_sr_cfg.sr.scale
            seconds = window_seconds(self.tok_sr_cfg)
            picked = pick_sr_clips(read_clips(self.p.curated), self.cfg.tokenize.sr_clips, side, seconds)
            if not picked:
                raise UserError(
                    f"no curated video clip is at least {side} pixels on its short side and {seconds:g} s long, "
                    "as super-resolution pairs need; add larger videos or set train_sr.enabled=false"
                )
            ids = {r["clip_id"] for r in picked}
            import pyarrow.compute as pc

            from videopoet.pipelines.commit import read_parquet_dir
            from videopoet.pipelines.schema import CLIP_SCHEMA

            table = read_parquet_dir(join(self.p.curated, "clips"), CLIP_SCHEMA)
            table = table.filter(pc.is_in(table["clip_id"], pa.array(sorted(ids))))
            write_parquet(url, table)
        return self.run_ray_job("tokenize_shards", self.tok_sr_cfg)

    def run_inspect(self) -> dict:
        job_module("inspect_shards").main(self.inspect_cfg)
        return {"report": join(self.p.shard_report, "index.html")}

    def run_trainer(self, module: str, cfg) -> dict:
        """A trainer in a child process: DeepSpeed keeps process-global state, so a second engine in one
        process (train-sr after train-lm) fails. The child runs the resolved config, its log streams through."""
        import subprocess
        import sys

        path = join(self.p.out, "configs", f"{module}.yaml")
        save_config(cfg, join(self.p.out, "configs"), f"{module}.yaml")
        cmd = [sys.executable, os.path.join(REPO_ROOT, "jobs", f"{module}.py"), "--config", path]
        log.info("running %s", " ".join(cmd))
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            raise UserError(
                f"{module.replace('_', '-')} stopped with exit code {rc} (its log is above); fix what it says and "
                "re-run the demo: training resumes from its last checkpoint"
            )
        from videopoet.jobs.demo_report import read_metrics

        metrics = read_metrics(join(cfg.output, "metrics.jsonl"))
        return {
            "step": _export_step(cfg.output),
            "last_loss": metrics[-1]["loss"] if metrics else None,
            "first_loss": metrics[0]["loss"] if metrics else None,
        }

    # -- generation -----------------------------------------------------------------------------------------
    def generation_inputs(self) -> dict[str, str | None]:
        from videopoet.jobs.tokenize_shards import read_clips

        g = self.cfg.generate
        given = {key: getattr(g, key) for key in ("prompt", "image", "video", "audio")}
        needed = {_task_input(t) for t in g.tasks} - {None}
        if all(given[k] for k in needed):
            return given
        picked = pick_inputs(read_clips(self.p.curated), window_seconds(self.tok_cfg))
        return {k: given[k] or picked[k] for k in given}

    def generate_configs(self) -> dict[str, Any]:
        """task -> its generate Config (inputs picked from the curated clips unless set)."""
        g, p = self.cfg.generate, self.p
        inputs = self.generation_inputs()
        use_sr = self.sr_on and generate_supports_sr() and _export_step(p.sr) is not None
        out = {}
        for task in g.tasks:
            ext = "png" if task == "text_to_image" else "mp4"
            wiring: dict[str, Any] = {
                "checkpoint": p.lm,
                "task": task,
                "output": join(p.generated, f"{task}.{ext}"),
            }
            needs = _task_input(task)
            if needs:
                if not inputs[needs]:
                    raise UserError(
                        f"generation task {task} needs {needs}, and the curated clips offer none that fits; "
                        f"set generate.{needs}=..."
                    )
                wiring[needs] = inputs[needs]
            if use_sr and task in g.sr_tasks:
                wiring["sr.checkpoints"] = [p.sr]
            out[task] = step_config("generate", g, wiring)
        return out

    def generations_done(self) -> bool:
        if not os.path.isdir(self.p.generated):
            return False
        try:
            cfgs = self.generate_configs()
        except UserError:
            return False
        return all(self._generation_done(c) for c in cfgs.values())

    def _generation_done(self, cfg) -> bool:
        """Its output exists, was made with this config, and is newer than the LM (and SR) it came from."""
        out = cfg.output
        yaml_path = out + ".yaml"
        if not (os.path.isfile(out) and os.path.isfile(yaml_path)):
            return False
        with open(yaml_path) as f:
            if f.read() != dump_yaml(cfg):
                return False
        models = [join(self.p.lm, "model.safetensors")]
        if getattr(cfg, "sr", None) is not None and getattr(cfg.sr, "checkpoints", None):
            models += [join(m, "model.safetensors") for m in cfg.sr.checkpoints]
        return all(_mtime(out) > _mtime(m) for m in models)

    def run_generate(self) -> dict:
        gen = job_module("generate")
        results = {}
        cfgs = self.generate_configs()
        for i, (task, cfg) in enumerate(cfgs.items(), 1):
            if self._generation_done(cfg):
                log.info("generate %d/%d: %s already done -> %s", i, len(cfgs), task, cfg.output)
                results[task] = self._generation_record(cfg, None)
                continue
            log.info("generate %d/%d: %s -> %s", i, len(cfgs), task, cfg.output)
            t = time.time()
            with heartbeat(f"generate {i}/{len(cfgs)}: {task}: sampling tokens, decoding"):
                gen.main(cfg)
            results[task] = self._generation_record(cfg, round(time.time() - t, 1))
        return results

    @staticmethod
    def _generation_record(cfg, seconds: float | None) -> dict:
        rec = {"output": cfg.output, "seconds": seconds}
        for key in ("prompt", "image", "video", "audio"):
            if getattr(cfg, key, None):
                rec[key] = getattr(cfg, key)
        sr = getattr(cfg, "sr", None)
        rec["sr"] = bool(sr is not None and getattr(sr, "checkpoints", None))
        return rec


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------------


def main(cfg: Config) -> dict:
    from videopoet.jobs import demo_report

    t0 = time.time()
    demo = Demo(cfg)  # every step's config is built (and checked) before any work
    os.makedirs(demo.p.out, exist_ok=True)
    save_config(cfg, demo.p.out)
    steps = demo.steps()
    runner = Runner(demo.p.state, len(steps) + 1)
    log.info(
        "demo: %d steps into %s; progress below, the report at the end: %s",
        len(steps) + 1,
        demo.p.out,
        join(demo.p.report, "index.html"),
    )
    for step in steps:
        runner(step)
    runner.index += 1
    log.info(">>> [%d/%d] report: rebuilding %s", runner.index, runner.total, demo.p.report)
    url = demo_report.write_report(demo, runner.state)
    total = time.time() - t0
    lines = []
    for step in [*steps]:
        rec = runner.state["steps"].get(step.name, {})
        if rec.get("status") == "off":
            how = f"off ({rec.get('reason')})"
        elif rec.get("this_run") == "ran":
            how = f"ran in {fmt_seconds(rec['seconds'])}"
        else:
            how = "done earlier" + (
                f" ({fmt_seconds(rec['seconds'])})" if rec.get("seconds") is not None else ""
            )
        lines.append(f"  {step.name:<12} {how}")
    log.info(
        "demo finished in %s:\n%s\nreport: %s (open it in a browser; the folder is self-contained)",
        fmt_seconds(total),
        "\n".join(lines),
        os.path.abspath(url),
    )
    return {"report": url, "seconds": round(total, 1), "steps": runner.state["steps"]}


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    job_entry(__file__)
