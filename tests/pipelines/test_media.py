"""media.to_array: the per-thread reformatter reused across clips and sizes gives exactly a fresh one's pixels."""

from __future__ import annotations

import threading

import av
import numpy as np
from mediagen import VIDEO_AUDIO, VIDEO_CITY

from videopoet.pipelines.media import seek_video_frames, to_array


def _frames(path, n: int = 3) -> list:
    with av.open(str(path)) as c:
        return [f for _, f in zip(range(n), c.decode(video=0))]


def _fresh(frame, **kw) -> np.ndarray:
    """A new reformatter per frame, with swscale's defaults (what the code did before to_array)."""
    from av.video.reformatter import VideoReformatter

    return VideoReformatter().reformat(frame, interpolation="AREA", **kw).to_ndarray()


def test_reused_reformatter_matches_a_fresh_one_across_sizes_and_sources():
    city, talk = _frames(VIDEO_CITY), _frames(VIDEO_AUDIO)
    # alternate sources, sizes and formats on one thread: swscale must rebuild its filters at every change
    calls = [
        (city[0], dict(width=64, height=36, format="rgb24")),
        (talk[0], dict(width=50, height=40, format="rgb24")),
        (city[1], dict(width=64, height=36, format="rgb24")),
        (talk[1], dict(width=None, height=None, format="bgr24")),
        (city[2], dict(width=17, height=9, format="gray")),
        (talk[2], dict(width=50, height=40, format="rgb24")),
    ]
    for frame, kw in calls:
        got = to_array(frame, width=kw["width"], height=kw["height"], fmt=kw["format"])
        want = _fresh(frame, **{k: v for k, v in kw.items() if v is not None})
        assert got.dtype == want.dtype and np.array_equal(got, want), kw


def test_threads_keep_their_own_reformatter():
    """Decode threads (e.g. several calls in one Ray worker) never share a swscale context."""
    frames = _frames(VIDEO_CITY, 2)
    want = [_fresh(f, width=w, height=h, format="rgb24") for f, (w, h) in zip(frames, [(64, 36), (32, 18)])]
    errors: list[str] = []

    def work(k: int) -> None:
        f, (w, h) = frames[k % 2], [(64, 36), (32, 18)][k % 2]
        for _ in range(30):
            if not np.array_equal(to_array(f, width=w, height=h), want[k % 2]):
                errors.append(f"thread {k}")
                return

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors


def test_seek_frames_scaled_in_one_pass_equal_the_full_decode():
    """The seek path (one reformatter for the whole clip) returns what decoding every frame and picking gives."""
    with av.open(str(VIDEO_CITY)) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate)
        every = [_fresh(f, width=40, height=24, format="rgb24") for f in c.decode(video=0)]
    times = [k / fps for k in (0, 5, 11, 23)]
    got = seek_video_frames(str(VIDEO_CITY), times, width=40, height=24, fmt="rgb24")
    for t, g in zip(times, got):
        assert np.array_equal(g, every[round(t * fps)])
