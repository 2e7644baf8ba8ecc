"""Tiny real inputs for the tokenize / inspect tests: debug-size tokenizer checkpoints and a curated
`clips/` folder pointing at tests/assets (built by hand, as `videopoet curate` would write it).

The tokenizers have random weights (fine for testing the data path; the job itself refuses to run
without a checkpoint). The SoundStream codebooks are k-means initialized on real speech and music, as
its first training step would, so different audio gets different codes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from videopoet.pipelines.media import decode_audio, wav_bytes
from videopoet.pipelines.schema import CLIP_SCHEMA, to_table

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def make_checkpoints(root: Path) -> tuple[Path, Path]:
    """(magvit dir, soundstream dir) of debug-size tokenizers saved with save_pretrained."""
    from videopoet.tokenizers.magvit2 import MagvitConfig, MagvitV2
    from videopoet.tokenizers.soundstream import SoundStream, SoundStreamConfig

    torch.manual_seed(0)
    magvit, sound = root / "magvit", root / "soundstream"
    MagvitV2(MagvitConfig.from_name("debug")).save_pretrained(str(magvit))
    ss = SoundStream(SoundStreamConfig.from_name("debug", quantizer_dropout=0.0))
    speech = decode_audio(str(ASSETS / "speech_librivox.wav"))[:32000]
    music = decode_audio(str(ASSETS / "music_loop_amen.flac"))[:16000]
    wave = torch.from_numpy(np.concatenate([speech, music, speech[::-1].copy()]))[None]
    ss.train()
    with torch.no_grad():
        ss(wave)  # the first training forward k-means-initializes the codebooks
    ss.eval().save_pretrained(str(sound))
    return magvit, sound


def _cid(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()


def make_curated(root: Path) -> Path:
    """A curation output with 6 clips: video with audio, silent video, a too-short video, a landscape and a
    portrait image with captions, and a speech recording. Returns its folder."""
    cur = root / "curated"
    (cur / "clips").mkdir(parents=True)
    (cur / "audio").mkdir()
    launch = ASSETS / "video_launch_3s.mp4"  # 256x144, 24 fps, 3 s, sound
    launch_wav = cur / "audio" / "launch.wav"
    launch_wav.write_bytes(wav_bytes(decode_audio(str(launch), start_s=0.0, end_s=3.0), 16000))
    speech = ASSETS / "speech_librivox.wav"  # 16 kHz, 2.99 s
    speech_wav = cur / "audio" / "speech.wav"
    speech_wav.write_bytes(wav_bytes(decode_audio(str(speech)), 16000))
    portrait = root / "portrait_cat.png"  # a 160x256 crop of a real photo
    Image.open(ASSETS / "image_chelsea.jpg").crop((100, 0, 260, 256)).save(portrait)
    video = dict(modality="video", start_s=0.0, width=256, height=144)
    rows = [
        dict(
            video,
            clip_id=_cid("launch"),
            uri=str(launch),
            end_s=3.0,
            fps=24.0,
            caption="A rocket on a launch pad",
            audio_uri=str(launch_wav),
            has_audio=True,
        ),
        dict(video, clip_id=_cid("cockatoo"), uri=str(ASSETS / "video_cockatoo_3s.mp4"), end_s=3.0, fps=20.0),
        dict(video, clip_id=_cid("city"), uri=str(ASSETS / "video_city_2s.mp4"), end_s=2.0, fps=25.0),
        dict(
            clip_id=_cid("chelsea"),
            uri=str(ASSETS / "image_chelsea.jpg"),
            modality="image",
            width=384,
            height=256,
            caption=(ASSETS / "image_chelsea.txt").read_text().strip(),
        ),
        dict(
            clip_id=_cid("portrait"),
            uri=str(portrait),
            modality="image",
            width=160,
            height=256,
            caption="A tabby cat, a tall crop",
        ),
        dict(
            clip_id=_cid("speech"),
            uri=str(speech),
            modality="audio",
            start_s=0.0,
            end_s=2.99,
            caption=(ASSETS / "speech_librivox.txt").read_text().strip(),
            audio_uri=str(speech_wav),
        ),
    ]
    for r in rows:
        r["input_id"] = _cid("input:" + r["uri"])
    pq.write_table(to_table(rows, CLIP_SCHEMA), cur / "clips" / "part-00000.parquet")
    return cur


CLIP_IDS = {name: _cid(name) for name in ("launch", "cockatoo", "city", "chelsea", "portrait", "speech")}
