"""`videopoet inspect`: summary, validate (exit codes naming the corruption), show (decoded MP4 / PNG /
WAV + contact sheet) and the HTML report, checked in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from tokenize_fixtures import make_checkpoints

from videopoet.core.config import ConfigError, load_config
from videopoet.core.errors import UserError
from videopoet.jobs import cli, inspect_shards
from videopoet.model.vocab import Vocab
from videopoet.pipelines.shards import load_manifest, sample_id, write_manifest, write_shard
from videopoet.pipelines.tokenize_stages import checkpoint_info


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A 2-shard dataset in the tokenize job's format, with tokens in the debug tokenizers' vocabularies."""
    root = tmp_path_factory.mktemp("inspect")
    magvit, sound = make_checkpoints(root)
    video, audio = (
        checkpoint_info(str(magvit), "magvit2", "v"),
        checkpoint_info(str(sound), "soundstream", "a"),
    )
    meta = {
        "schema_version": 1,
        "video_tokenizer": video,
        "audio_tokenizer": audio,
        "text_encoder": {"id": "minilm:test", "dim": 384, "max_tokens": 64},
        "vocab": Vocab(visual_bits=10, audio_levels=4, audio_codebook_size=256).metadata(),
        "window": {"frames": 17, "fps": 8.0, "latent_frames": 5, "audio_frames": 106},
        "sr": {"scale": 2, "max_upscale": 1.0},
        "precision": "float32",
    }
    rng = np.random.default_rng(0)
    infos = []
    for s in range(2):
        rows = []
        for i in range(6):
            kind = ("video", "image", "audio")[i % 3]
            clip = f"{s}{i}" + "a" * 38
            r = {
                "sample_id": sample_id(clip, 0),
                "clip_id": clip,
                "window_index": 0,
                "uri": f"/m/{clip}",
                "modality": kind,
                "caption": f"sample {s}{i} caption" if i != 4 else None,
            }
            if kind != "image":
                r.update(start_s=0.0, end_s=2.125)
            if kind == "video":
                r.update(
                    fps=8.0,
                    num_frames=17,
                    width=128,
                    height=128,
                    video_tokens=rng.integers(0, 1024, (5, 16, 16), dtype=np.int32),
                    audio_tokens=rng.integers(0, 256, (4, 106), dtype=np.int32),
                )
            elif kind == "image":
                r.update(
                    num_frames=1,
                    width=128,
                    height=224,
                    video_tokens=rng.integers(0, 1024, (1, 28, 16), dtype=np.int32),
                )
                if i == 1:  # a super-resolution target (an image's: one frame, cheap to decode)
                    r.update(
                        sr_video_tokens=rng.integers(0, 1024, (1, 56, 32), dtype=np.int32),
                        sr_width=256,
                        sr_height=448,
                    )
            else:
                r.update(num_frames=0, audio_tokens=rng.integers(0, 256, (4, 106), dtype=np.int32))
            if r["caption"]:
                r["text_embedding"] = rng.standard_normal((6, 384)).astype(np.float16)
            r["num_tokens"] = sum(r[k].size for k in ("video_tokens", "audio_tokens") if k in r)
            rows.append(r)
        rows.sort(key=lambda r: r["sample_id"])
        name = f"shards/part-{s:05d}.parquet"
        infos.append({"name": name, **write_shard(str(root / "tokens" / name), rows, meta, row_group_size=4)})
    write_manifest(str(root / "tokens"), infos, meta)
    return root / "tokens"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "videopoet.jobs.cli", "inspect", *argv], capture_output=True, text=True
    )


def _cfg(*args: str) -> inspect_shards.Config:
    return load_config(inspect_shards.Config, "configs/inspect.yaml", list(args))


def test_summary(dataset, capsys):
    stats = inspect_shards.main(_cfg("command=summary", f"dataset={dataset}"))
    assert stats["rows_by_modality"] == {"audio": 4, "image": 4, "video": 4}
    assert stats["tokens_by_modality"]["video"] == {"audio": 4 * 424, "video": 4 * 1280}
    assert stats["tokens_by_modality"]["image"] == {"sr": 2 * 1792, "video": 4 * 448}
    assert stats["seconds_by_modality"] == {"audio": 8.5, "video": 8.5}
    assert stats["resolutions"] == {"image": {"128x224": 4}, "video": {"128x128": 4}}
    ct = stats["caption_tokens_hist"]
    assert stats["captioned_rows"] == 10 == sum(ct["counts"]) and ct["edges"][0] < 6 < ct["edges"][-1]
    usage = stats["visual_codes"]
    assert usage["tokens"] == 4 * 1280 + 4 * 448 and 900 < usage["codes_used"] <= 1024
    assert len(stats["audio_codes"]) == 4 and stats["audio_codes"][0]["codebook_size"] == 256
    out = capsys.readouterr().out
    assert "visual codes:" in out and "video" in out and "128x224 x4" in out


def test_validate_exit_codes_name_the_corruption(dataset, tmp_path, capsys):
    assert cli.run("inspect", ["validate", str(dataset)]) == 0
    assert "ok (manifest, checksums, schema, metadata, every row)" in capsys.readouterr().out
    bad = tmp_path / "bad"
    shutil.copytree(dataset, bad)
    manifest = load_manifest(str(bad))
    shard = manifest["shards"][1]
    rows = [r for r in _rows(bad) if r["clip_id"].startswith("1")]
    victim = 5  # row group 1, row 1
    rows[victim]["audio_tokens"] = rows[victim]["audio_tokens"].copy()
    rows[victim]["audio_tokens"][2, 7] = 300  # outside the 256 codes of a level
    info = write_shard(str(bad / shard["name"]), rows, manifest["meta"], row_group_size=4)
    write_manifest(str(bad), [manifest["shards"][0], {"name": shard["name"], **info}], manifest["meta"])
    res = _run("validate", str(bad))  # the real command's exit status
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "shards/part-00001.parquet, row group 1, row 1" in res.stderr
    assert f"(sample {rows[victim]['sample_id']})" in res.stderr and "audio_tokens[219] = 300" in res.stderr


def test_show_decodes_video_with_audio_image_and_audio(dataset, tmp_path):
    rows = {r["modality"]: r for r in _rows(dataset)}
    out = tmp_path / "show"
    files = inspect_shards.main(
        _cfg(
            "command=show",
            f"dataset={dataset}",
            f"sample_id={rows['video']['sample_id'][:6]}",
            f"output={out}",
        )
    )
    with av.open(files["video"]) as c:
        assert c.streams.video[0].width == 128 and len(c.streams.audio) == 1
        assert sum(1 for _ in c.decode(video=0)) == 17
    sheet = Image.open(files["contact_sheet"])
    assert sheet.width >= 512 and np.asarray(sheet).std() > 10
    files = inspect_shards.main(
        _cfg("command=show", f"dataset={dataset}", f"sample_id={rows['image']['sample_id']}", f"output={out}")
    )
    assert Image.open(files["image"]).size == (128, 224)
    files = inspect_shards.main(
        _cfg("command=show", f"dataset={dataset}", f"sample_id={rows['audio']['sample_id']}", f"output={out}")
    )
    with av.open(files["audio"]) as c:
        assert abs(c.streams.audio[0].duration * c.streams.audio[0].time_base - 2.12) < 0.01
    with pytest.raises(UserError, match="no sample 'zzz'"):
        inspect_shards.main(_cfg("command=show", f"dataset={dataset}", "sample_id=zzz", f"output={out}"))
    with pytest.raises(UserError, match="matches 6 samples"):
        inspect_shards.main(_cfg("command=show", f"dataset={dataset}", "sample_id=1", f"output={out}"))
    with pytest.raises(ConfigError, match="sample_id"):
        _cfg("command=show", f"dataset={dataset}")


def test_show_refuses_a_checkpoint_that_did_not_make_the_tokens(dataset, tmp_path):
    meta = load_manifest(str(dataset))["meta"]
    other = tmp_path / "magvit"
    shutil.copytree(meta["video_tokenizer"]["checkpoint"], other)
    (other / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    sid = _rows(dataset)[0]["sample_id"]
    with pytest.raises(UserError, match="these tokens were made by magvit2:"):
        inspect_shards.main(
            _cfg("command=show", f"dataset={dataset}", f"sample_id={sid}", f"video_checkpoint={other}")
        )


def test_cli_positionals(dataset, capsys):
    _, cfg = cli.parse_job_args("inspect", ["show", str(dataset), "abc", "device=cpu"])
    assert (cfg.command, cfg.dataset, cfg.sample_id) == ("show", str(dataset), "abc")
    assert cli.run("inspect", ["summary", str(dataset), "max_row_groups=1"]) == 0
    assert "statistics over 1 of 4 row groups" in capsys.readouterr().out
    assert cli.run("inspect", ["show", str(dataset)]) == 2  # show needs a sample id
    assert "sample_id" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(dataset, tmp_path):
    out = tmp_path / "report"
    result = inspect_shards.main(_cfg("command=report", f"dataset={dataset}", f"output={out}", "previews=3"))
    page = Path(result["report"]).read_text()
    assert page.count("<svg") >= 6 and page.count('class="preview"') == 3 and "no problems found" in page
    assert json.loads((out / "summary.json").read_text())["rows_total"] == 12
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium) to render the report headless")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1280,2200",
            f"file://{result['report']}",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert shot.exists(), "chromium wrote no screenshot"
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    non_white = (img.min(axis=2) < 200).mean()
    blue = ((img[..., 2] > 150) & (img[..., 0] < 100)).mean()  # the charts' bars
    assert non_white > 0.03 and blue > 0.002 and img.std() > 20, (non_white, blue, img.std())


def _rows(dataset: Path) -> list[dict]:
    from videopoet.pipelines.shards import ShardReader

    return list(ShardReader(str(dataset), shuffle=False, loop=False))
