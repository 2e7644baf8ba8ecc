"""Train a tokenizer: the SoundStream audio codec or the MAGVIT-v2 video/image tokenizer.

    videopoet train-tokenizer --config configs/tokenizer/soundstream_small.yaml
    python jobs/train_tokenizer.py --config configs/tokenizer/soundstream_debug.yaml soundstream.steps=20
    videopoet train-tokenizer --config configs/tokenizer/soundstream_small.yaml stage=prepare   # cache only
    torchrun --nproc_per_node 8 jobs/train_tokenizer.py --config configs/tokenizer/soundstream_small.yaml stage=train

`kind: soundstream` runs in two stages. `prepare` decodes the real audio named in
`soundstream.data.prepare.inputs` (files, folders, manifests, curation outputs, or `debian:PACKAGE/GLOB`:
files of a Debian package fetched with `apt-get download`, licence read from its copyright file) into
the cache `soundstream.data.cache`: 16 kHz mono int16 shards + index.json with each file's source, licence
and split (train / heldout, decided per source file). It needs PyAV (and apt for debian: inputs).
`train` reads only that cache (tokenizers/soundstream/train.py): a GPU machine needs torch, numpy,
safetensors, einops, fsspec, pyyaml and pystoi, but no PyAV and no network. `stage: all` (default)
prepares the cache when it is missing, then trains. Outputs: see tokenizers/soundstream/train.py; the
resolved config is saved as out_dir/config.yaml.

`kind: magvit2` dispatches to `videopoet.tokenizers.magvit2.train` (its `TrainConfig` is filled strictly from
the `magvit2:` section) with the same stages: `prepare` decodes the videos and images of
`magvit2.data.prepare.inputs` (PyAV) into the JPEG-frame Parquet cache `magvit2.data.cache` (split per
source file); `train` reads only that cache (torch, torchvision, pyarrow; no PyAV):

    videopoet train-tokenizer --config configs/tokenizer/magvit2_debug.yaml          # CPU smoke run
    videopoet train-tokenizer --config configs/tokenizer/magvit2_small.yaml stage=prepare
    python jobs/train_tokenizer.py --config configs/tokenizer/magvit2_small.yaml stage=train

docs/TOKENIZER_TRAINING.md has the planned GPU runs.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from videopoet.core.config import check, from_dict, save_config
from videopoet.core.errors import UserError
from videopoet.core.io import exists, join
from videopoet.core.log import get_logger
from videopoet.tokenizers.soundstream.data import INDEX_NAME, AudioInput, SourceFile, prepare_cache
from videopoet.tokenizers.soundstream.train import TrainConfig
from videopoet.tokenizers.soundstream.train import train as train_soundstream

DEFAULT_CONFIG = "configs/tokenizer/soundstream_small.yaml"
POSITIONAL = ()

TRAINERS = {
    "soundstream": "videopoet.tokenizers.soundstream.train",
    "magvit2": "videopoet.tokenizers.magvit2.train",
}
"""kind -> trainer module. A trainer module defines `TrainConfig` (dataclass) and `train(cfg) -> dict`."""

log = get_logger("videopoet.train_tokenizer")


@dataclass(kw_only=True)
class Config:
    kind: Literal["soundstream", "magvit2"] = "soundstream"
    """Which tokenizer to train: soundstream (audio, the `soundstream` section) or magvit2 (video, the `magvit2` section)."""
    stage: Literal["all", "prepare", "train"] = "all"
    """all: build the data cache if it is missing, then train; prepare: (re)build the cache only; train: train from an existing cache."""
    soundstream: TrainConfig = field(default_factory=TrainConfig)
    """SoundStream run: model, loss, data (cache + how to prepare it), optimization, evaluation, outputs."""
    magvit2: dict[str, Any] = field(default_factory=dict)
    """MAGVIT-v2 run, read by videopoet.tokenizers.magvit2.train.TrainConfig (ignored for kind=soundstream)."""

    def __post_init__(self) -> None:
        check(
            self.kind == "magvit2" or not self.magvit2,
            "magvit2",
            self.magvit2,
            "empty unless kind is magvit2 (set kind=magvit2 or remove the section)",
        )


# ---- debian:PACKAGE/GLOB inputs ------------------------------------------------------------------------
def debian_resolver(cache_dir: str | None):
    """A resolver for `debian:PACKAGE/GLOB` inputs: downloads the package (apt-get download), unpacks only the
    members matching GLOB (fnmatch; `*` also crosses `/`) and records each file's licence from the package's
    copyright file."""
    from videopoet.jobs.sample_data import UPSTREAM, DebCache, default_cache_dir

    cache = DebCache(cache_dir or default_cache_dir())

    def resolve(spec: AudioInput) -> list[SourceFile]:
        rest = spec.uri.split(":", 1)[1].lstrip("/")
        package, _, pattern = rest.partition("/")
        if not package or not pattern:
            raise UserError(
                f"input {spec.uri!r} is not debian:PACKAGE/GLOB, e.g. "
                "debian:pocketsphinx-testdata/usr/share/pocketsphinx/test/data/librivox/*.wav"
            )
        pkg = cache.extract(package, [pattern])
        if pkg is None:
            raise UserError(
                f"Debian package {package} could not be fetched (see the warning above); drop {spec.uri}"
            )
        out = []
        for dirpath, _, names in os.walk(pkg.root):
            for name in names:
                rel = os.path.relpath(os.path.join(dirpath, name), pkg.root).replace(os.sep, "/")
                if fnmatch.fnmatchcase(rel, pattern):
                    lic, rule = pkg.copyright.license_for(rel, UPSTREAM.get(package))
                    out.append(
                        SourceFile(
                            uri=os.path.join(dirpath, name),
                            id=f"debian:{package}/{rel}",
                            license=lic,
                            meta={
                                "package": package,
                                "version": pkg.version,
                                "package_path": rel,
                                "license_rule": rule,
                            },
                        )
                    )
        if not out:
            raise UserError(
                f"no file of Debian package {package} {pkg.version} matches {pattern!r} ({spec.uri})"
            )
        return out

    return resolve


# ---- stages ---------------------------------------------------------------------------------------------
def prepare(cfg: TrainConfig) -> dict:
    """Build the audio cache of a SoundStream run from its `data.prepare.inputs`."""
    p = cfg.data.prepare
    index = prepare_cache(p, cfg.data.cache, resolvers={"debian": debian_resolver(p.deb_cache)})
    for key, t in index["totals"].items():
        log.info("cache %s: %-16s %4d files %8.1f s", cfg.data.cache, key, t["files"], t["seconds"])
    return index


def _trainer_module(kind: str):
    name = TRAINERS[kind]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            raise UserError(
                f"kind={kind} is not available yet: its trainer module {name} does not exist in this checkout; "
                "use kind=soundstream"
            ) from None
        raise


def main(cfg: Config) -> dict:
    if cfg.kind != "soundstream":
        mod = _trainer_module(cfg.kind)
        sub = from_dict(mod.TrainConfig, cfg.magvit2, prefix=f"{cfg.kind}.")
        return _main_magvit2(cfg, sub, mod)

    ss = cfg.soundstream
    have_cache = exists(join(ss.data.cache, INDEX_NAME))
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if cfg.stage == "prepare" or (cfg.stage == "all" and not have_cache):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(
                f"the audio cache {ss.data.cache} must be prepared before a distributed run: run "
                "stage=prepare in one process first, then torchrun ... stage=train"
            )
        prepare(ss)
        if cfg.stage == "prepare":
            return {"cache": ss.data.cache}
    elif cfg.stage == "train" and not have_cache:
        raise UserError(
            f"no audio cache at {ss.data.cache} ({INDEX_NAME} missing); run with stage=prepare (or stage=all) "
            "on a machine with PyAV first, or point soundstream.data.cache at a prepared cache"
        )
    if rank0:
        save_config(cfg, ss.out_dir)
    return train_soundstream(ss)


def _main_magvit2(cfg: Config, sub, mod) -> dict:
    """The magvit2 branch: the same prepare / train stages as SoundStream's, on the frame cache."""
    from videopoet.tokenizers.magvit2.data import INDEX_NAME as VIDEO_INDEX

    cache = sub.data.cache
    have_cache = exists(join(cache, VIDEO_INDEX))
    if cfg.stage == "prepare" or (cfg.stage == "all" and not have_cache):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(
                f"the frame cache {cache} must be prepared before a distributed run: run stage=prepare in one "
                "process first, then torchrun ... stage=train"
            )
        mod.prepare(sub, resolvers={"debian": debian_resolver(sub.data.prepare.deb_cache)})
        if cfg.stage == "prepare":
            return {"cache": cache}
    elif cfg.stage == "train" and not have_cache:
        raise UserError(
            f"no frame cache at {cache} ({VIDEO_INDEX} missing); run with stage=prepare (or stage=all) on a "
            "machine with PyAV first, or point magvit2.data.cache at a prepared cache"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        # the resolved run (every key of the magvit2 section), re-runnable with --config
        save_config({"kind": cfg.kind, "stage": cfg.stage, "magvit2": sub}, sub.out_dir)
    return mod.train(sub)


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    job_entry(__file__)
