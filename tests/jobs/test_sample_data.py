"""`videopoet sample-data`: config checks, licence parsing, manifest + resume, known cuts, broken files.

The fast tests use the real clips in tests/assets and never download; the slow one builds the whole corpus
(and may download the Debian packages into ~/.cache/videopoet/debs).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import wave
from pathlib import Path
from random import Random

import av
import numpy as np
import pytest
from PIL import Image

from videopoet.core.config import ConfigError, load_config
from videopoet.core.errors import UserError
from videopoet.jobs import cli
from videopoet.jobs import sample_data as sd

CONFIG_YAML = str(Path(cli.REPO_ROOT) / sd.DEFAULT_CONFIG)


def _frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24").astype(np.float32) for f in c.decode(video=0)]


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _largest_jumps(frames: list[np.ndarray], k: int) -> list[int]:
    """Indices j of the k frames that differ most from frame j-1."""
    diffs = np.array([np.abs(frames[j] - frames[j - 1]).mean() for j in range(1, len(frames))])
    return sorted(int(j) + 1 for j in np.argsort(diffs)[::-1][:k])


# --- config ---------------------------------------------------------------------------------------------


def test_yaml_defaults_are_the_code_defaults(tmp_path):
    assert load_config(sd.Config, CONFIG_YAML, [f"out={tmp_path}"]) == sd.Config(out=str(tmp_path))


@pytest.mark.parametrize(
    "override, key",
    [
        ("groups=[video, clips]", "groups"),
        ("groups=[]", "groups"),
        ("groups=[video, video]", "groups"),
        ("max_package_mb=0", "max_package_mb"),
        ("max_images=-1", "max_images"),
        ("max_music_s=0", "max_music_s"),
        ("apt_update=sometimes", "apt_update"),
        ("known_cuts.max_pieces=9", "known_cuts.max_pieces"),
        ("known_cuts.min_pieces=1", "known_cuts.min_pieces"),
        ("known_cuts.width=641", "known_cuts.width"),
        ("known_cuts.fps=0", "known_cuts.fps"),
        ("known_cuts.piece_s=10", "known_cuts.piece_s"),
    ],
)
def test_bad_config_names_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(sd.Config, CONFIG_YAML, [f"out={tmp_path}", override])


def test_out_must_be_local():
    with pytest.raises(ConfigError, match="'out'"):
        sd.Config(out="s3://bucket/corpus")


# --- licences -------------------------------------------------------------------------------------------

DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fake

Files: *
Copyright: 2020 Someone
License: Expat

Files: data/*
Copyright: 2000 Intel
License: BSD-3-Clause

Files: original-files/*
       original-multiple/test.txt
Copyright: 2020 Someone Else
License: CC-BY-SA-4.0

Files: etc/samples/loop.flac
Copyright: 2007 Dolfeus
License: CC0

Files: debian/*
Copyright: 2021 Packager
License: GPL-2+

License: Expat
 Permission is hereby granted, free of charge, ...
"""


def test_parse_copyright_dep5_stanzas_and_upstream_paths():
    c = sd.parse_copyright(DEP5)
    # a file named by its own stanza, found by name although it is installed elsewhere
    assert c.license_for("usr/share/sonic-pi/samples/loop.flac") == ("CC0", "Files: etc/samples/loop.flac")
    # install path mapped to the upstream path; a multi-line Files field
    up = {"usr/share/forensics-samples/": ""}
    assert c.license_for("usr/share/forensics-samples/original-files/m/a.mp4", up)[0] == "CC-BY-SA-4.0"
    assert c.license_for("usr/share/forensics-samples/original-multiple/test.txt", up)[0] == "CC-BY-SA-4.0"
    # an install path that merely ends like an upstream folder is NOT that folder (opencv's samples/data)
    assert c.license_for("usr/share/doc/fake/examples/data/vtest.avi") == ("Expat", "Files: *")
    assert (
        c.license_for(
            "usr/share/doc/fake/examples/data/vtest.avi", {"usr/share/doc/fake/examples/": "samples/"}
        )[0]
        == "Expat"
    )
    assert (
        c.license_for("usr/share/doc/fake/examples/data/vtest.avi", {"usr/share/doc/fake/examples/": ""})[0]
        == "BSD-3-Clause"
    )
    # debian/* never applies to shipped files
    assert c.license_for("debian/changelog")[0] == "Expat"


def test_parse_copyright_free_form():
    gpl = "This package is free software; you can redistribute it and/or modify it under the terms of the GNU General Public License as published by the Free Software Foundation; either version 2 of the License, or (at your option) any later version."
    assert sd.parse_copyright(gpl).license_for("x/y.jpg") == ("GPL-2+", "(free-form copyright file)")
    assert sd.parse_copyright("All rights reserved.").license_for("a") == (
        "UNKNOWN",
        "(free-form copyright file)",
    )


# --- manifest, sidecars, licences, resume on a fake unpacked package --------------------------------------


def _fake_package(tmp_path, assets) -> sd.ExtractedPackage:
    root = tmp_path / "root" / "fakepkg_1.0-1_all"
    (root / "usr/share/fakepkg/sounds").mkdir(parents=True)
    (root / "usr/share/doc/fakepkg").mkdir(parents=True)
    shutil.copyfile(assets / "speech_librivox.wav", root / "usr/share/fakepkg/sounds/hello.wav")
    shutil.copyfile(assets / "music_loop_amen.flac", root / "usr/share/fakepkg/sounds/loop.flac")
    (root / "usr/share/doc/fakepkg/copyright").write_text(DEP5)
    return sd.ExtractedPackage(name="fakepkg", version="1.0-1", root=root, copyright_text=DEP5)


def test_corpus_rows_sidecars_licences_and_resume(tmp_path, assets):
    pkg = _fake_package(tmp_path, assets)
    out = tmp_path / "out"
    c = sd.Corpus(out)
    c.packages["fakepkg"] = pkg
    c.copy(
        pkg,
        "usr/share/fakepkg/sounds/hello.wav",
        "audio/speech/fake_hello.wav",
        group="speech",
        modality="audio",
        transcript="he was not an ill disposed young man",
    )
    c.copy(
        pkg,
        "usr/share/fakepkg/sounds/loop.flac",
        "audio/music/fake_loop.flac",
        group="music",
        modality="audio",
    )
    manifest = c.save(done_groups={"speech", "music"})
    assert c.copy_licenses() == ["fakepkg"]
    assert c.made == 2 and c.kept == 0

    rows = {r["uri"]: r for r in sd.read_manifest(manifest)}
    assert set(rows) == {"audio/speech/fake_hello.wav", "audio/music/fake_loop.flac"}
    speech, music = rows["audio/speech/fake_hello.wav"], rows["audio/music/fake_loop.flac"]
    assert (out / speech["uri"]).read_bytes() == (assets / "speech_librivox.wav").read_bytes()
    assert (
        speech["sha256"] == _sha(out / speech["uri"])
        and speech["bytes"] == (out / speech["uri"]).stat().st_size
    )
    assert (speech["package"], speech["version"], speech["package_path"]) == (
        "fakepkg",
        "1.0-1",
        "usr/share/fakepkg/sounds/hello.wav",
    )
    assert speech["license"] == "Expat" and music["license"] == "CC0"
    assert speech["transcript"] == "he was not an ill disposed young man"
    assert (out / speech["sidecar"]).read_text() == "he was not an ill disposed young man\n"
    assert music["sidecar"] is None and music["expected"] is None
    assert speech["probe"]["sample_rate"] == 16000 and speech["probe"]["error"] is None
    assert (out / "licenses/fakepkg.copyright").read_text() == DEP5
    # `videopoet curate` reads manifests with pyarrow: one schema for all rows, uri relative to the manifest
    import pyarrow.json as pj

    assert pj.read_json(manifest).column("uri").to_pylist() == sorted(rows)

    # resume: an untouched file is kept; a damaged one is made again
    c2 = sd.Corpus(out)
    c2.copy(
        pkg,
        "usr/share/fakepkg/sounds/hello.wav",
        "audio/speech/fake_hello.wav",
        group="speech",
        modality="audio",
    )
    assert (c2.made, c2.kept) == (0, 1)
    (out / "audio/music/fake_loop.flac").write_bytes(b"damaged")
    c2.copy(
        pkg,
        "usr/share/fakepkg/sounds/loop.flac",
        "audio/music/fake_loop.flac",
        group="music",
        modality="audio",
    )
    assert (c2.made, c2.kept) == (1, 1)
    assert _sha(out / "audio/music/fake_loop.flac") == music["sha256"]


def test_save_keeps_rows_of_groups_not_rebuilt(tmp_path, assets):
    pkg = _fake_package(tmp_path, assets)
    c = sd.Corpus(tmp_path / "out")
    c.copy(pkg, "usr/share/fakepkg/sounds/hello.wav", "audio/speech/a.wav", group="speech", modality="audio")
    c.copy(pkg, "usr/share/fakepkg/sounds/loop.flac", "audio/music/b.flac", group="music", modality="audio")
    c.save(done_groups={"speech", "music"})
    c2 = sd.Corpus(tmp_path / "out")  # a run that builds only `music`
    c2.copy(pkg, "usr/share/fakepkg/sounds/loop.flac", "audio/music/b.flac", group="music", modality="audio")
    rows = sd.read_manifest(c2.save(done_groups={"music"}))
    assert [r["uri"] for r in rows] == ["audio/music/b.flac", "audio/speech/a.wav"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (a Debian-based machine)")
def test_unpack_selected_members_of_a_deb_built_here(tmp_path, assets):
    import subprocess

    pkg = _fake_package(tmp_path, assets)
    (pkg.root / "usr/share/fakepkg/links").mkdir(parents=True)
    (pkg.root / "usr/share/fakepkg/links/a_hello.wav").symlink_to("../sounds/hello.wav")
    (pkg.root / "usr/share/fakepkg/links/b_outside.wav").symlink_to("../../../../../etc/hostname")
    (pkg.root / "DEBIAN").mkdir()
    (pkg.root / "DEBIAN/control").write_text(
        "Package: fakepkg\nVersion: 1:1.0-1\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: test\n"
    )
    debs = tmp_path / "cache/debs"
    debs.mkdir(parents=True)
    deb = debs / "fakepkg_1%3a1.0-1_all.deb"  # the name apt-get download gives (epoch ':' as %3a)
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg.root), str(deb)],
        check=True,
        capture_output=True,
    )

    cache = sd.DebCache(str(tmp_path / "cache"), apt_update="never")
    got = cache.extract("fakepkg", ["usr/share/fakepkg/sounds/*.wav"])  # cached: no apt needed
    assert got.version == "1:1.0-1" and got.copyright_text == DEP5
    assert (
        got.file("usr/share/fakepkg/sounds/hello.wav").read_bytes()
        == (assets / "speech_librivox.wav").read_bytes()
    )
    assert not (got.root / "usr/share/fakepkg/sounds/loop.flac").exists(), "only the asked-for members"
    # a symbolic link into the package (wallpaper packages link one picture under many names) is unpacked as
    # a copy of its target (read in a second pass: the target may come later in the archive)
    got = cache.extract("fakepkg", ["usr/share/fakepkg/links/*.wav"])
    assert (
        got.file("usr/share/fakepkg/links/a_hello.wav").read_bytes()
        == (assets / "speech_librivox.wav").read_bytes()
    )
    assert not (got.root / "usr/share/fakepkg/links/b_outside.wav").exists(), (
        "links out of the package are skipped"
    )
    got = cache.extract("fakepkg", ["usr/share/fakepkg/sounds/loop.flac"])  # asking for more unpacks more
    assert got.file("usr/share/fakepkg/sounds/loop.flac").stat().st_size > 0

    deb.write_bytes(b"!<arch>\nnot really a deb")
    shutil.rmtree(got.root)
    with pytest.raises(UserError, match="delete it to download it again"):
        cache.extract("fakepkg", ["usr/share/fakepkg/sounds/*.wav"])


# --- known cuts ---------------------------------------------------------------------------------------------


def test_concat_pieces_cut_frames_match_the_truth(tmp_path, assets):
    cock, city = str(assets / "video_cockatoo_3s.mp4"), str(assets / "video_city_2s.mp4")
    pieces = [sd.Piece(cock, 0.5, "cockatoo"), sd.Piece(city, 0.2, "city"), sd.Piece(cock, 2.0, "cockatoo")]
    dst = tmp_path / "cut.mp4"
    truth = sd.concat_pieces(pieces, dst, piece_s=0.5, fps=12, width=128, height=72)
    assert truth["cut_frames"] == [6, 12] and truth["cuts_s"] == [0.5, 1.0] and truth["frames"] == 18
    assert truth == sd.known_cut_truth(pieces, piece_s=0.5, fps=12, width=128, height=72)

    frames = _frames(dst)
    assert len(frames) == truth["frames"]
    assert frames[0].shape == (72, 128, 3)
    with av.open(str(dst)) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    assert np.allclose(times, np.arange(18) / 12, atol=1e-3)
    assert _largest_jumps(frames, 2) == truth["cut_frames"]

    again = tmp_path / "again.mp4"
    sd.concat_pieces(pieces, again, piece_s=0.5, fps=12, width=128, height=72)
    assert _sha(again) == _sha(dst), "same inputs must give the same bytes"


def test_known_cut_asset_matches_its_json(assets):
    truth = json.loads((assets / "known_cut.json").read_text())
    frames = _frames(assets / "known_cut.mp4")
    assert len(frames) == truth["frames"] == 36
    assert _largest_jumps(frames, len(truth["cut_frames"])) == truth["cut_frames"] == [12, 24]
    assert truth["cuts_s"] == [f / truth["fps"] for f in truth["cut_frames"]]


def test_sample_frames_stops_at_the_end_of_the_clip(assets):
    clip = assets / "video_city_2s.mp4"  # 50 frames at 25 fps
    assert len(sd.sample_frames(clip, 1.5, 12, 24, 64, 36)) == 12
    with pytest.raises(ValueError, match="ends before"):
        sd.sample_frames(clip, 1.8, 12, 24, 64, 36)


def test_choose_pieces_avoids_real_cuts_and_clip_ends():
    pool = [("a", 7.6, (4.64,)), ("b", 8.0, (3.08,)), ("c", 14.0, ()), ("d", 2.2, ())]
    for seed in range(50):
        chosen = sd.choose_pieces(Random(seed), pool, 3, 2.0)
        assert len(chosen) == 3 and len({i for i, _ in chosen}) == 3
        for i, start in chosen:
            _, dur, cuts = pool[i]
            assert i != 3, "a 2.2 s clip has no 2 s window clear of its end"
            assert start >= 0.1 and start + 2.0 <= dur - 0.3
            assert all(c <= start - 0.3 or c >= start + 2.3 for c in cuts)


# --- broken inputs ---------------------------------------------------------------------------------------------


def test_broken_generators_make_what_they_claim(tmp_path, assets):
    cock = assets / "video_cockatoo_3s.mp4"
    n_frames = len(_frames(cock))

    sd.write_zero_bytes(tmp_path / "zero.mp4")
    assert (tmp_path / "zero.mp4").stat().st_size == 0 and sd.probe(tmp_path / "zero.mp4")["error"]

    sd.write_random_bytes(tmp_path / "r1.mp4", 4096, seed=3)
    sd.write_random_bytes(tmp_path / "r2.mp4", 4096, seed=3)
    assert (tmp_path / "r1.mp4").stat().st_size == 4096 and _sha(tmp_path / "r1.mp4") == _sha(
        tmp_path / "r2.mp4"
    )
    assert sd.probe(tmp_path / "r1.mp4")["error"]

    # index first (faststart): the truncated file opens but runs out of frames
    sd.write_truncated(cock, tmp_path / "trunc.mp4", 0.5)
    assert (tmp_path / "trunc.mp4").stat().st_size == cock.stat().st_size // 2
    assert sd.probe(tmp_path / "trunc.mp4")["error"] is None
    got, _ = sd.decode_all_frames(tmp_path / "trunc.mp4")
    assert 0 < got < n_frames

    # index last: the truncated file cannot be opened at all
    frames = [f.astype(np.uint8) for f in _frames(cock)[:24]]
    sd.write_video(tmp_path / "index_last.mp4", frames, 20, faststart=False)
    sd.write_truncated(tmp_path / "index_last.mp4", tmp_path / "trunc_no_index.mp4", 0.5)
    assert sd.probe(tmp_path / "index_last.mp4")["error"] is None
    assert sd.probe(tmp_path / "trunc_no_index.mp4")["error"]

    sd.write_corrupted(cock, tmp_path / "corrupt.mp4", seed=0, chunks=3, chunk_bytes=512)
    assert (tmp_path / "corrupt.mp4").stat().st_size == cock.stat().st_size
    assert _sha(tmp_path / "corrupt.mp4") != _sha(cock)

    launch = assets / "video_launch_3s.mp4"  # H.264 + AAC
    sd.write_audio_only(launch, tmp_path / "audio_only.m4a")
    p = sd.probe(tmp_path / "audio_only.m4a")
    assert (p["video_codec"], p["audio_codec"]) == (None, "aac")
    assert p["duration_s"] == pytest.approx(3.0, abs=0.1)
    pcm, _ = sd.read_audio(tmp_path / "audio_only.m4a")
    assert np.sqrt((pcm**2).mean()) > 0.005, "the rocket's real sound, not silence"

    sd.write_video(tmp_path / "one.mp4", frames[:1], 24)
    assert sd.decode_all_frames(tmp_path / "one.mp4") == (1, None)

    strip = sd.sample_frames(assets / "video_city_2s.mp4", 0.0, 12, 24, 640, 64)
    sd.write_video(tmp_path / "strip.mp4", strip, 24)
    p = sd.probe(tmp_path / "strip.mp4")
    assert (p["width"], p["height"]) == (640, 64)

    sd.write_empty_wav(tmp_path / "empty.wav")
    with wave.open(str(tmp_path / "empty.wav")) as w:
        assert w.getnframes() == 0 and w.getframerate() == 16000

    sd.write_truncated(assets / "image_city.jpg", tmp_path / "half.jpg", 0.4)
    img = Image.open(tmp_path / "half.jpg")  # the header is intact ...
    assert img.size == Image.open(assets / "image_city.jpg").size
    with pytest.raises(OSError):  # ... the pixels are not
        img.load()


def test_trimmed_music_is_opus_of_the_asked_length(tmp_path, assets):
    pcm, rate = sd.read_audio(assets / "music_loop_amen.flac", 0.25, 1.0)
    assert pcm.shape == (2, rate) and rate == 44100 and np.abs(pcm).max() > 0.05
    sd.write_audio(tmp_path / "loop.ogg", pcm, rate)
    p = sd.probe(tmp_path / "loop.ogg")
    assert (p["audio_codec"], p["sample_rate"], p["channels"]) == ("opus", 48000, 2)
    back, _ = sd.read_audio(tmp_path / "loop.ogg")
    assert abs(back.shape[1] / 48000 - 1.0) < 0.03


# --- environment ---------------------------------------------------------------------------------------------


def test_no_apt_get_is_a_clear_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))  # as on a machine without apt
    cfg = sd.Config(out=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"), groups=["speech"])
    with pytest.raises(UserError, match="apt-get was not found") as e:
        sd.main(cfg)
    assert "Debian" in str(e.value) and "your own media" in str(e.value)


# --- end to end ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_corpus(tmp_path):
    out = tmp_path / "corpus"
    summary = sd.main(load_config(sd.Config, CONFIG_YAML, [f"out={out}"]))
    rows = sd.read_manifest(summary["manifest"])
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)
    counts = {g: len(v) for g, v in by_group.items()}
    minimum = {"video": 9, "known_cuts": 7, "images": 24, "speech": 22, "music": 10, "broken": 12}
    assert all(counts.get(g, 0) >= n for g, n in minimum.items()), counts
    assert 30e6 < summary["bytes"] < 150e6 and 60 <= len(rows) <= 120

    accounted = {"manifest.jsonl", "config.yaml", "known_cuts/cuts.json"}
    for r in rows:
        path = out / r["uri"]
        assert path.is_file() and _sha(path) == r["sha256"] and path.stat().st_size == r["bytes"], r["uri"]
        assert r["license"] and "UNKNOWN" not in r["license"], r["uri"]
        assert (r["expected"] is not None) == (r["group"] == "broken"), r["uri"]
        for s in r["sources"]:
            if s["package"]:
                assert s["version"] and (out / "licenses" / f"{s['package']}.copyright").is_file()
                assert (out / "licenses" / f"{s['package']}.copyright").stat().st_size > 100
        text = r["caption"] or r["transcript"]
        if text:
            assert (out / r["sidecar"]).read_text() == text + "\n"
            accounted.add(r["sidecar"])
        accounted.add(r["uri"])
    on_disk = {
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.parts[len(out.parts)] != "licenses"
    }
    assert on_disk == accounted, "every file is a manifest row, a row's sidecar, or the known cuts' JSON"

    assert any(r["modality"] == "video" and r["probe"]["audio_codec"] for r in by_group["video"])
    assert sum(bool(r["caption"]) for r in by_group["images"]) >= 8
    assert sum(bool(r["caption"]) for r in by_group["video"]) >= 6  # text-to-video needs captioned footage
    assert all(r["transcript"] for r in by_group["speech"])
    truth = json.loads((out / "known_cuts/cuts.json").read_text())["videos"]
    assert len(truth) == 7 and sum(not t["cut_frames"] for t in truth.values()) == 1
    for name, t in list(truth.items())[:2]:
        frames = _frames(out / "known_cuts" / name)
        assert len(frames) == t["frames"]
        assert _largest_jumps(frames, len(t["cut_frames"])) == t["cut_frames"]

    again = sd.main(load_config(sd.Config, CONFIG_YAML, [f"out={out}"]))
    assert again["made"] == 0 and again["kept"] == len(rows), "a re-run keeps every finished file"
    assert sd.read_manifest(again["manifest"]) == rows
