"""videopoet generate: MP4s with audio from a debug LM trained by train-lm, for every task, from its export or
its DeepSpeed checkpoint, with the tokenizers and text encoder its training data was made with; and the
cascade through a super-resolution stage trained by train-sr on the same data."""

from __future__ import annotations

from pathlib import Path

import av
import lm_fixtures as F
import numpy as np
import pytest
import torch

from videopoet.core.config import load_config
from videopoet.core.errors import UserError
from videopoet.jobs import cli
from videopoet.jobs import generate as G
from videopoet.jobs.train_lm import load_trained_lm

ASSETS = F.REPO_ROOT / "tests" / "assets"
VIDEO = ASSETS / "video_cockatoo_3s.mp4"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[F.Dataset, Path]:
    root = tmp_path_factory.mktemp("gen")
    ds = F.make_dataset(root, sr=True)  # 2x pairs for the SR stage; the LM does not read them
    out = root / "run"
    res = F.train([f"data.url={ds.url}", f"output={out}", "train.max_steps=3"])
    assert res.returncode == 0, res.stderr[-5000:]
    return ds, out


def generate(run_dir: Path, out: Path, *overrides: str) -> dict:
    cfg = load_config(
        G.Config,
        str(F.REPO_ROOT / "configs/generate.yaml"),
        [f"checkpoint={run_dir}", f"output={out}", *overrides],
    )
    return G.main(cfg)


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        audio = None
        if c.streams.audio:
            rate = c.streams.audio[0].sample_rate
            n = sum(f.samples for f in c.decode(audio=0))
            audio = n / rate
    return {
        "codec": v.codec_context.name,
        "frames": len(frames),
        "size": frames[0].shape[:2],
        "audio_s": audio,
    }


def test_text_to_video_with_guidance_negative_prompt_and_one_extension(run, tmp_path):
    _, run_dir = run
    out = tmp_path / "t2v.mp4"
    res = generate(
        run_dir,
        out,
        "task=text_to_video",
        "prompt=A white cockatoo turns its head on a perch.",
        "negative_prompt=blurry",
        "sampling.guidance_scale=3",
        "sampling.top_k=100",
        "extend=1",
    )
    info = probe(out)
    # 9 frames, then one window whose first 5 frames (2 latent frames ~ the last second) are its context
    assert info == {
        "codec": "h264",
        "frames": 13,
        "size": (32, 32),
        "audio_s": pytest.approx(13 / 8, abs=0.08),
    }
    assert res["frames"] == 13
    assert (tmp_path / "t2v.mp4.yaml").is_file()


def test_video_to_audio_keeps_the_video_and_adds_generated_audio(run, tmp_path):
    _, run_dir = run
    out = tmp_path / "v2a.mp4"
    generate(run_dir, out, "task=video_to_audio", f"video={VIDEO}")
    info = probe(out)
    assert info["frames"] == 9 and info["size"] == (32, 32)
    assert info["audio_s"] == pytest.approx(9 / 8, abs=0.08)
    with av.open(str(out)) as c:
        pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    assert np.abs(pcm).max() > 0, "the generated audio is not silence"


@pytest.mark.parametrize(
    "task,inputs",
    [
        ("unconditional", []),
        ("image_to_video", [f"image={ASSETS / 'image_chelsea.jpg'}"]),
        ("frame_prediction", [f"video={ASSETS / 'video_city_2s.mp4'}"]),
        ("inpainting", [f"video={ASSETS / 'video_city_2s.mp4'}"]),
        ("outpainting", [f"video={ASSETS / 'video_city_2s.mp4'}"]),
        ("audio_to_video", [f"audio={ASSETS / 'speech_librivox.wav'}"]),
        ("audio_video_continuation", [f"video={VIDEO}"]),
    ],
)
def test_every_other_task_writes_an_mp4(run, tmp_path, task, inputs):
    _, run_dir = run
    out = tmp_path / f"{task}.mp4"
    generate(run_dir, out, f"task={task}", *inputs)
    info = probe(out)
    assert (
        info["frames"] == 9 and info["size"] == (32, 32) and info["audio_s"] == pytest.approx(9 / 8, abs=0.08)
    )


def test_text_to_image_png(run, tmp_path):
    from PIL import Image

    _, run_dir = run
    out = tmp_path / "cat.png"
    generate(run_dir, out, "task=text_to_image", "prompt=A cat looks at the camera.")
    assert Image.open(out).size == (32, 32)


def test_deepspeed_checkpoint_and_export_load_the_same_weights(run):
    _, run_dir = run
    export = load_trained_lm(str(run_dir))
    ckpt = load_trained_lm(str(run_dir / "checkpoints"))
    assert export.info["vocab"] == ckpt.info["vocab"] == F.VOCAB
    a, b = export.model.state_dict(), ckpt.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_a_tokenizer_other_than_the_one_the_data_was_made_with(run, tmp_path):
    from videopoet.tokenizers.magvit2 import MagvitConfig, MagvitV2

    _, run_dir = run
    torch.manual_seed(1)
    MagvitV2(MagvitConfig.from_name("debug")).save_pretrained(str(tmp_path / "other"))
    with pytest.raises(UserError, match="not the MAGVIT-v2 the LM's training tokens were made with"):
        generate(run_dir, tmp_path / "x.mp4", f"tokenizers.video={tmp_path / 'other'}", "prompt=x")


def test_cli_exits_1_with_a_message_for_a_missing_input(run, tmp_path, capsys):
    _, run_dir = run
    assert cli.run("generate", [str(run_dir), "task=video_to_audio", f"output={tmp_path}/o.mp4"]) == 1
    assert "needs an input: set video=PATH" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sr_run(run) -> Path:
    ds, run_dir = run
    out = run_dir.parent / "sr"
    res = F.train([f"data.url={ds.url}", f"output={out}"], job="train_sr")
    assert res.returncode == 0, res.stderr[-5000:]
    return out


def test_sr_cascade_doubles_every_window_of_a_long_video(run, sr_run, tmp_path):
    _, run_dir = run
    out = tmp_path / "t2v_sr.mp4"
    res = generate(
        run_dir,
        out,
        "task=text_to_video",
        "prompt=A white cockatoo turns its head on a perch.",
        f"sr.checkpoints=[{sr_run}]",
        "sr.sampling.steps=4",
        "sr.sampling.text_guidance=2",
        "sr.sampling.lr_guidance=1.5",
        "extend=1",
    )
    info = probe(out)
    assert info == {
        "codec": "h264",
        "frames": 13,
        "size": (64, 64),
        "audio_s": pytest.approx(13 / 8, abs=0.08),
    }
    assert res["size"] == (64, 64)


def test_refuses_an_sr_stage_trained_on_another_tokenizer(run, tmp_path):
    from videopoet.core.config import to_dict
    from videopoet.jobs.train_sr import EXPORT_FORMAT
    from videopoet.jobs.trainer import export_model
    from videopoet.model.sr import SRConfig, SRTransformer

    ds, run_dir = run
    cfg = SRConfig.from_name("debug")
    shards = {"video_tokenizer": dict(ds.meta["video_tokenizer"], sha256="0" * 64), "text_encoder": None}
    info = {"format": EXPORT_FORMAT, "sr": to_dict(cfg), "text_slots": 16, "shards": shards, "step": 1}
    export_model(str(tmp_path / "other_sr"), SRTransformer(cfg).state_dict(), info)
    with pytest.raises(UserError, match="trained on tokens of another MAGVIT-v2"):
        generate(run_dir, tmp_path / "x.mp4", "prompt=x", f"sr.checkpoints=[{tmp_path / 'other_sr'}]")


@pytest.mark.parametrize("content", [b"", b"this is not a picture", b"\x89PNG\r\n\x1a\n truncated"])
def test_a_bad_input_image_is_a_user_error_naming_the_file(tmp_path, content):
    bad = tmp_path / "not an image.png"
    bad.write_bytes(content)
    with pytest.raises(UserError, match="not an image.png.*PNG, JPEG or WebP"):
        G.read_image(str(bad), None, [(64, 64)])
    with pytest.raises(UserError, match="does not exist"):
        G.read_image(str(tmp_path / "missing.png"), None, [(64, 64)])
