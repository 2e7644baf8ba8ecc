"""SceneSplitStage: cut a video into clips at scene changes, and score each clip, in one decode pass.

Frames are decoded once, at a reduced analysis size (default 160 px wide, `analysis_width`), and each
frame goes straight into a PySceneDetect detector (`ContentDetector`, or `AdaptiveDetector`) and into
the per-frame statistics, then is dropped: memory stays bounded whatever the length or resolution of
the video. What is kept per frame is a handful of scalars (time, mean and spread of luma, black
fraction, motion), so a one-hour 30 fps video holds about 2 MB of them.

Spans are frame-accurate: `start_frame`/`end_frame` (exclusive) count decoded frames in presentation
order; `start_s`/`end_s` are those frames' presentation times relative to the stream start (`end_s`
of the last clip is the end of its last frame). Scenes shorter than `min_clip_s` are kept in the output
as clip-level rejections (`clip_too_short`); scenes longer than `max_clip_s` are cut into equal windows
of at most that length (equal, so the remainder is not a too-short sliver).

Scores (on the luma of the analysis frames, video range: black 16, white 235):
- `motion_score`: mean absolute difference between the grayscale frame and the one `motion_interval_s`
  earlier (1/8 s by default), averaged over the clip. A fixed time step, not the previous frame, makes
  the score independent of the frame rate and lifts slow real motion above encoder noise. Frame
  differencing rather than optical flow: it costs ~0.05 ms per frame at this size, and the filters only
  need to separate "nothing moves" from "something moves"; camera pans and object motion both count.
- `brightness`: mean luma over the clip.
- `is_black`: at least `black_fraction` of the frames are black (>= 98% of pixels at or below
  `black_luma`, as ffmpeg's blackdetect does).
- `is_static`: motion below `static_motion`, or at least `black_fraction` of the frames blank (luma
  standard deviation below `blank_std`: a slate, a solid colour, a black screen with flicker).
Clip-level rejections, checked in this order: `clip_too_short`, `black`, `static`, `low_motion`
(`min_motion`), `too_dark` (`min_brightness`).

Images and audio pass through as one clip (`clip_index=0`, `clip_count=1`).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from videopoet.core.config import check
from videopoet.pipelines.base import Resources, Row, Stage, reject
from videopoet.pipelines.media import analysis_size, iter_video_frames, local_path, num


@dataclass(kw_only=True)
class SceneConfig:
    detector: Literal["content", "adaptive"] = "content"
    """PySceneDetect detector: `content` (ContentDetector: HSV difference against `threshold`) or
    `adaptive` (AdaptiveDetector: the same score against a rolling average; fewer false cuts on fast
    camera motion)."""
    threshold: float = 27.0
    """ContentDetector threshold (PySceneDetect's default 27; lower finds more cuts)."""
    adaptive_threshold: float = 3.0
    """AdaptiveDetector: ratio of a frame's score to its neighbours' average that makes a cut."""
    adaptive_window: int = 2
    """AdaptiveDetector: frames on each side averaged for the ratio."""
    adaptive_min_content_val: float = 15.0
    """AdaptiveDetector: a cut also needs at least this content score."""
    hist_gate: float | None = 0.3
    """A cut also needs the frame's hue/saturation histogram to differ from the previous frame's by at
    least this Bhattacharyya distance (0..1). Measured on the known-cut corpus: real cuts >= 0.6, fast
    motion inside a shot <= 0.17, while the content score of such motion (27-29) reaches the threshold.
    null = stock PySceneDetect behaviour."""
    min_scene_len_s: float = 0.6
    """The detector emits no two cuts closer than this (PySceneDetect's `min_scene_len`, CLI default 0.6 s)."""
    analysis_width: int = 160
    """Frames are decoded scaled to this width (aspect kept) for detection and scores."""
    decode_threads: int = 2
    """Decoder threads (`thread_type=AUTO`: frame + slice threading); 0 = ffmpeg's choice, one per core
    of the machine. PyAV releases the GIL while decoding, so a second thread overlaps decoding with the
    per-frame analysis; more threads per task oversubscribe a node where Ray runs one task per CPU."""
    cpus: float = 1.0
    """CPUs Ray reserves per scene-split task."""
    max_decode_errors: int = 0
    """Videos with more packets that fail to decode (corrupt data: the decoder conceals it with
    smeared blocks) are rejected as `undecodable`; the decode pass itself skips them and goes on."""
    min_clip_s: float = 1.0
    """Scenes shorter than this become clip-level rejections (`clip_too_short`)."""
    max_clip_s: float = 10.0
    """Scenes longer than this are cut into equal windows of at most this length."""
    motion_interval_s: float = 0.125
    """Motion is the frame difference across this time step (1/8 s: VideoPoet's 8 fps)."""
    static_motion: float | None = 0.2
    """Clips with motion_score below this are static (`static`); null = never. Measured: an encoded
    still image 0.001-0.01, a fixed-camera launch pad with faint smoke 0.32, fixed-camera pedestrians
    0.8-1.6, handheld footage 2-17."""
    min_motion: float | None = None
    """Clips with motion_score below this (but not static) are rejected (`low_motion`); null = off.
    0.5-1.0 keeps fixed-camera scenes with people moving and drops near-still shots."""
    blank_std: float = 5.0
    """A frame whose luma standard deviation is below this is blank (uniform)."""
    black_luma: int = 32
    """A pixel at or below this luma is black (analysis frames are video-range YUV: black is 16)."""
    black_fraction: float = 0.9
    """A clip is black (or blank) when at least this fraction of its frames are."""
    min_brightness: float | None = 30.0
    """Clips with mean luma below this (but not black) are rejected (`too_dark`); null = off. Video
    range: black is 16, white 235; a city at night measures about 85."""

    def __post_init__(self):
        check(self.threshold > 0, "threshold", self.threshold, "> 0")
        check(self.adaptive_threshold > 0, "adaptive_threshold", self.adaptive_threshold, "> 0")
        check(self.adaptive_window >= 1, "adaptive_window", self.adaptive_window, ">= 1")
        check(
            self.hist_gate is None or 0 < self.hist_gate < 1, "hist_gate", self.hist_gate, "null or in (0, 1)"
        )
        check(self.min_scene_len_s >= 0, "min_scene_len_s", self.min_scene_len_s, ">= 0")
        check(self.analysis_width >= 16, "analysis_width", self.analysis_width, ">= 16")
        check(self.decode_threads >= 0, "decode_threads", self.decode_threads, ">= 0 (0 = automatic)")
        check(self.cpus > 0, "cpus", self.cpus, "> 0")
        check(self.max_decode_errors >= 0, "max_decode_errors", self.max_decode_errors, ">= 0")
        check(self.min_clip_s >= 0, "min_clip_s", self.min_clip_s, ">= 0")
        check(
            self.max_clip_s > max(self.min_clip_s, 0),
            "max_clip_s",
            self.max_clip_s,
            f"> min_clip_s ({self.min_clip_s})",
        )
        check(self.motion_interval_s > 0, "motion_interval_s", self.motion_interval_s, "> 0")
        check(0 < self.black_fraction <= 1, "black_fraction", self.black_fraction, "in (0, 1]")
        check(0 <= self.black_luma <= 255, "black_luma", self.black_luma, "in [0, 255]")

    def make_detector(self, fps: float):
        """A fresh detector; `min_scene_len` in frames at `fps`, as the scenedetect CLI converts it."""
        from scenedetect import AdaptiveDetector, ContentDetector

        min_len = round(self.min_scene_len_s * fps)
        if self.detector == "adaptive":
            base, kwargs = (
                AdaptiveDetector,
                {
                    "adaptive_threshold": self.adaptive_threshold,
                    "min_scene_len": min_len,
                    "window_width": self.adaptive_window,
                    "min_content_val": self.adaptive_min_content_val,
                },
            )
        else:
            base, kwargs = ContentDetector, {"threshold": self.threshold, "min_scene_len": min_len}
        if self.hist_gate is None:
            return base(**kwargs)
        return _hist_gated(base)(hist_gate=self.hist_gate, **kwargs)


def _hist_gated(base: type) -> type:
    """`base` (ContentDetector or AdaptiveDetector) whose frame score counts only on a colour change.

    A frame whose hue/saturation histogram is close to the previous frame's (Bhattacharyya distance
    below `hist_gate`) scores 0, so fast motion inside one shot - which moves pixels but keeps the
    colours - cannot fire a cut, nor (through the flash filter) swallow the real cut right after it.

    The content score is PySceneDetect's own (mean absolute difference of hue, saturation and value
    between consecutive frames, default weights 1/1/1, no edges), computed with OpenCV instead of
    int32 numpy arrays and sharing one HSV conversion with the histogram: about half the per-frame
    cost, the same numbers (tests/pipelines/test_scenes.py compares them with the stock detector).
    """
    import cv2

    class HistGated(base):
        def __init__(self, *, hist_gate: float, **kwargs):
            super().__init__(**kwargs)
            self.hist_gate = hist_gate
            self._prev: tuple | None = None  # hue, sat, value planes and histogram of the last frame

        def _calculate_frame_score(self, timecode, frame_img):
            hue, sat, val = cv2.split(cv2.cvtColor(frame_img, cv2.COLOR_BGR2HSV))
            hist = cv2.calcHist([hue, sat], [0, 1], None, [16, 8], [0, 180, 0, 256])
            cv2.normalize(hist, hist, 1.0, 0.0, cv2.NORM_L1)
            prev, self._prev = self._prev, (hue, sat, val, hist)
            if prev is None:
                return 0.0
            if cv2.compareHist(prev[3], hist, cv2.HISTCMP_BHATTACHARYYA) < self.hist_gate:
                return 0.0
            return sum(cv2.mean(cv2.absdiff(a, b))[0] for a, b in zip((hue, sat, val), prev)) / 3.0

    HistGated.__name__ = HistGated.__qualname__ = f"HistGated{base.__name__}"
    return HistGated


@dataclass
class VideoAnalysis:
    """What one decode pass leaves: the cuts, and per-frame scalars (never the frames)."""

    fps: float
    cuts: list[int]
    """Frame numbers where a new scene starts (sorted, within (0, num_frames))."""
    times: array
    luma: array
    luma_std: array
    black: array
    """Per frame: 1.0 when >= 98% of pixels are at or below black_luma."""
    motion: array
    """Per frame i: mean |gray[i] - gray[i - step]|, NaN for the first `step` frames."""
    step: int
    decode_errors: list[str] = field(default_factory=list)
    """Packets that failed to decode (skipped)."""
    peak_frames_held: int = 0
    """Most decoded frames referenced at once by the analysis (the motion ring + the current one)."""

    @property
    def num_frames(self) -> int:
        return len(self.times)

    def end_time(self, end_frame: int) -> float:
        if end_frame < self.num_frames:
            return self.times[end_frame]
        return self.times[-1] + 1.0 / self.fps

    def clip_stats(self, s: int, e: int, cfg: SceneConfig) -> dict:
        luma = np.frombuffer(self.luma, np.float32)[s:e]
        std = np.frombuffer(self.luma_std, np.float32)[s:e]
        black = np.frombuffer(self.black, np.float32)[s:e]
        motion = (
            np.frombuffer(self.motion, np.float32)[s + self.step : e]
            if e - s > self.step
            else np.zeros(0, np.float32)
        )
        motion = motion[~np.isnan(motion)]
        motion_score = float(motion.mean()) if motion.size else None
        black_frac = float(black.mean()) if black.size else 0.0
        blank_frac = float((std < cfg.blank_std).mean()) if std.size else 0.0
        is_black = black_frac >= cfg.black_fraction
        is_static = blank_frac >= cfg.black_fraction or (
            cfg.static_motion is not None and motion_score is not None and motion_score < cfg.static_motion
        )
        return {
            "motion_score": motion_score,
            "brightness": float(luma.mean()) if luma.size else None,
            "is_black": bool(is_black),
            "is_static": bool(is_static),
            "_blank_frac": blank_frac,
        }


def analyze_video(path: str, cfg: SceneConfig, *, width: int, height: int, fps: float) -> VideoAnalysis:
    """One streaming decode pass: detector cuts + per-frame statistics, at most `step + 1` frames held."""
    import cv2
    from scenedetect import FrameTimecode

    fps = float(fps)
    rate = FrameTimecode(0, fps)  # passing a FrameTimecode as the rate skips re-parsing fps every frame
    detector = cfg.make_detector(fps)
    aw, ah = analysis_size(width, height, cfg.analysis_width)
    step = max(1, round(fps * cfg.motion_interval_s))
    ring: deque = deque(maxlen=step)  # the last `step` gray frames (small), for the motion difference
    a = VideoAnalysis(
        fps=fps,
        cuts=[],
        times=array("d"),
        luma=array("f"),
        luma_std=array("f"),
        black=array("f"),
        motion=array("f"),
        step=step,
    )
    black_thresh = np.uint8(cfg.black_luma)
    cuts: list = []
    tc = None
    npx = aw * ah
    # Scale in YUV (one cheap swscale pass with area averaging), then take luma as the gray frame for
    # free and convert the small frame to the BGR the detector wants: ~3x cheaper than asking swscale
    # for BGR directly at 720p.
    frames = iter_video_frames(
        path, width=aw, height=ah, fmt="yuv420p", threads=cfg.decode_threads, errors=a.decode_errors
    )
    last_t = -math.inf
    for fr in frames:
        yuv = fr.image
        t = fr.time_s if fr.time_s > last_t else last_t + 1.0 / fps  # broken timestamps: keep time moving
        last_t = t
        img = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420)
        gray = yuv[:ah]
        tc = FrameTimecode(fr.index, rate)
        cuts += detector.process_frame(tc, img)
        mean, std = cv2.meanStdDev(gray)
        a.times.append(t)
        a.luma.append(float(mean[0, 0]))
        a.luma_std.append(float(std[0, 0]))
        a.black.append(1.0 if np.count_nonzero(gray <= black_thresh) >= 0.98 * npx else 0.0)
        if len(ring) == step:
            a.motion.append(cv2.mean(cv2.absdiff(gray, ring[0]))[0])
        else:
            a.motion.append(math.nan)
        ring.append(gray)
        a.peak_frames_held = max(a.peak_frames_held, len(ring) + 1)
    if tc is not None:
        cuts += detector.post_process(tc)
    n = a.num_frames
    a.cuts = sorted({int(c.frame_num) for c in cuts if 0 < int(c.frame_num) < n})
    return a


def scene_spans(cuts: list[int], times, end_time: float, max_s: float) -> list[tuple[int, int]]:
    """[start, end) frame spans covering every frame without overlap: the scenes between `cuts`, each
    scene longer than `max_s` cut into the fewest equal windows of at most `max_s`.

    Windows are cut by presentation time, not frame count, so a variable-frame-rate file (an AVI with
    dropped frames, a phone clip) still gets windows of at most `max_s` seconds.
    """
    n = len(times)
    bounds = [0, *cuts, n]
    spans: list[tuple[int, int]] = []
    for s, e in zip(bounds, bounds[1:]):
        if e <= s:
            continue
        t0 = times[s]
        t_end = times[e] if e < n else end_time
        duration = t_end - t0
        pieces = max(1, math.ceil(duration / max_s - 1e-9))
        while True:
            edges = (
                [s]
                + [
                    bisect.bisect_left(times, t0 + j * duration / pieces - 1e-9, s, e)
                    for j in range(1, pieces)
                ]
                + [e]
            )
            edges = sorted(set(edges))
            ends = [times[b] if b < n else end_time for b in edges[1:]]
            longest = max(t1 - times[a] for a, t1 in zip(edges, ends))
            if longest <= max_s + 1e-6 or pieces >= e - s:
                break
            pieces += 1
        spans += list(zip(edges, edges[1:]))
    return spans


def clip_id(content_sha256: str, start_frame: int, end_frame: int) -> str:
    """Same content and span -> same id (docs/CURATION.md)."""
    return hashlib.sha1(f"{content_sha256}:{start_frame}:{end_frame}".encode()).hexdigest()


class SceneSplitStage(Stage):
    """Fans each video row out into clip rows (kept or clip-level rejected); images/audio pass as one clip."""

    name: ClassVar[str] = "scenes"

    def __init__(self, *, cfg: SceneConfig | None = None):
        self.cfg = cfg or SceneConfig()
        self.resources = Resources(cpus=self.cfg.cpus)

    def process_row(self, row: Row) -> list[Row]:
        modality = row.get("modality")
        if modality != "video":
            return [self._single_clip(row)]
        fps = num(row, "fps") or 25.0
        width, height = int(num(row, "width") or 0), int(num(row, "height") or 0)
        if width <= 0 or height <= 0:
            return [reject(row, self.name, "undecodable", f"{row['uri']}: probe found no frame size")]
        with local_path(row["uri"]) as path:
            analysis = analyze_video(path, self.cfg, width=width, height=height, fps=fps)
        if analysis.num_frames == 0:
            return [reject(row, self.name, "undecodable", f"{row['uri']}: no frame decoded")]
        if len(analysis.decode_errors) > self.cfg.max_decode_errors:
            errs = analysis.decode_errors
            detail = f"{row['uri']}: {len(errs)} corrupt packets (> max_decode_errors {self.cfg.max_decode_errors})"
            return [reject(row, self.name, "undecodable", f"{detail}, first: {errs[0]}")]
        return self.clip_rows(row, analysis)

    def clip_rows(self, row: Row, analysis: VideoAnalysis) -> list[Row]:
        cfg = self.cfg
        end_time = analysis.end_time(analysis.num_frames)
        spans = scene_spans(analysis.cuts, analysis.times, end_time, cfg.max_clip_s)
        out = []
        for i, (s, e) in enumerate(spans):
            stats = analysis.clip_stats(s, e, cfg)
            blank_frac = stats.pop("_blank_frac")
            start_s, end_s = analysis.times[s], analysis.end_time(e)
            clip = dict(row)
            clip.update(
                clip_index=i,
                clip_count=len(spans),
                clip_id=clip_id(row["content_sha256"], s, e),
                start_frame=s,
                end_frame=e,
                start_s=start_s,
                end_s=end_s,
                **stats,
            )
            verdict = self._judge(end_s - start_s, stats, blank_frac)
            out.append(reject(clip, self.name, *verdict) if verdict else clip)
        return out

    def _judge(self, length_s: float, stats: dict, blank_frac: float) -> tuple[str, str] | None:
        cfg = self.cfg
        motion, bright = stats["motion_score"], stats["brightness"]
        if length_s < cfg.min_clip_s:
            return "clip_too_short", f"{length_s:.2f}s < min_clip_s {cfg.min_clip_s}"
        if stats["is_black"]:
            return (
                "black",
                f"at least {cfg.black_fraction:.0%} of frames black (luma <= black_luma {cfg.black_luma})",
            )
        if stats["is_static"]:
            if blank_frac >= cfg.black_fraction:
                return "static", f"{blank_frac:.0%} of frames blank (luma std < blank_std {cfg.blank_std})"
            return "static", f"motion_score {motion:.2f} < static_motion {cfg.static_motion}"
        if cfg.min_motion is not None and motion is not None and motion < cfg.min_motion:
            return "low_motion", f"motion_score {motion:.2f} < min_motion {cfg.min_motion}"
        if cfg.min_brightness is not None and bright is not None and bright < cfg.min_brightness:
            return "too_dark", f"brightness {bright:.1f} < min_brightness {cfg.min_brightness}"
        return None

    def _single_clip(self, row: Row) -> Row:
        """Images and audio: one clip spanning the whole input."""
        image = row.get("modality") == "image"
        end_frame = 1 if image else 0
        out = dict(row)
        out.update(
            clip_index=0,
            clip_count=1,
            clip_id=clip_id(row["content_sha256"], 0, end_frame),
            start_frame=0,
            end_frame=end_frame,
            start_s=0.0,
            end_s=0.0 if image else float(num(row, "duration_s") or 0.0),
        )
        return out
