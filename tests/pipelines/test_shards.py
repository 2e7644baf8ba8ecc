"""Token shards: write -> read round trip, rank split, resumable reader, third-party readers, compatibility
checks and validation (pipelines/shards.py)."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from videopoet.core.errors import UserError
from videopoet.model.vocab import Vocab
from videopoet.pipelines.shards import (
    ShardReader,
    load_manifest,
    sample_id,
    validate_dataset,
    write_manifest,
    write_shard,
)

META = {
    "schema_version": 1,
    "video_tokenizer": {
        "kind": "magvit2",
        "id": "magvit2:cfg-aaa:sha256-1111",
        "sha256": "1" * 64,
        "checkpoint": "ckpt/magvit",
        "codebook_bits": 10,
        "vocab_size": 1024,
    },
    "audio_tokenizer": {
        "kind": "soundstream",
        "id": "soundstream:cfg-bbb:sha256-2222",
        "sha256": "2" * 64,
        "checkpoint": "ckpt/ss",
        "num_levels": 4,
        "codebook_size": 256,
        "vocab_size": 1024,
    },
    "text_encoder": {"id": "minilm:test", "dim": 8, "max_tokens": 64},
    "vocab": Vocab(visual_bits=10, audio_levels=4, audio_codebook_size=256).metadata(),
    "window": {"frames": 17, "fps": 8.0, "latent_frames": 5, "audio_frames": 6},
}


def make_rows(n: int, seed: int, shard: int) -> list[dict]:
    """Rows of every kind: video with audio and text, video with SR, image, audio only."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = ("video", "video", "image", "audio")[i % 4]
        clip = f"{shard:02d}{i:02d}" + "c" * 36
        r = {
            "sample_id": sample_id(clip, i % 3),
            "clip_id": clip,
            "window_index": i % 3,
            "input_id": "in" + clip,
            "uri": f"/media/{clip}.mp4",
            "modality": kind,
            "caption": None if i % 5 == 0 else f"caption {i}",
            "start_s": 2.125 * (i % 3),
            "end_s": 2.125 * (i % 3 + 1),
            "fps": 8.0,
            "num_frames": 17,
            "width": 128,
            "height": 128,
            "source_width": 256,
            "source_height": 144,
        }
        if kind in ("video", "image"):
            t = 5 if kind == "video" else 1
            r["video_tokens"] = rng.integers(0, 1024, (t, 4, 4), dtype=np.int32)
        if kind == "video" and i % 8 == 1:
            r["sr_video_tokens"] = rng.integers(0, 1024, (5, 8, 8), dtype=np.int32)
            r["sr_width"], r["sr_height"] = 256, 256
        if kind in ("video", "audio") and i % 2 == 0 or kind == "audio":
            r["audio_tokens"] = rng.integers(0, 256, (4, 6), dtype=np.int32)
        if r["caption"]:
            r["text_embedding"] = rng.standard_normal((3 + i % 4, 8)).astype(np.float16)
        if kind == "image":
            r.update(start_s=None, end_s=None, fps=None, num_frames=1)
        if kind == "audio":
            r.update(fps=None, num_frames=0, width=None, height=None)
        r["num_tokens"] = sum(r[k].size for k in ("video_tokens", "audio_tokens") if r.get(k) is not None)
        rows.append(r)
    return rows


def write_dataset(root, shards=3, rows=10, row_group_size=4, meta=META) -> tuple[str, list[dict]]:
    infos, all_rows = [], []
    for s in range(shards):
        rs = sorted(make_rows(rows, seed=s, shard=s), key=lambda r: r["sample_id"])
        name = f"shards/part-{s:05d}.parquet"
        infos.append({"name": name, **write_shard(str(root / name), rs, meta, row_group_size)})
        all_rows += rs
    write_manifest(str(root), infos, meta)
    return str(root), all_rows


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "tokens")


def _same(a: dict, b: dict) -> None:
    for k, v in a.items():
        w = b[k]
        if isinstance(v, np.ndarray):
            assert isinstance(w, np.ndarray) and w.dtype == v.dtype and w.shape == v.shape, (k, w, v)
            assert np.array_equal(v, w), k
        elif isinstance(v, float) and w is not None:
            assert abs(v - w) < 1e-6, (k, v, w)
        else:
            assert v == w, (k, v, w)


def test_round_trip_values_shapes_and_metadata(dataset, tmp_path):
    url, rows = dataset
    reader = ShardReader(url, shuffle=False, loop=False)
    got = list(reader)
    assert len(got) == len(rows) == reader.num_rows
    for want, have in zip(rows, got):
        _same(want, have)
        for k in ("video_tokens", "audio_tokens", "sr_video_tokens", "text_embedding"):
            if k not in want:
                assert have[k] is None, k
    assert got[2]["video_shape"] == (1, 4, 4) and got[2]["modality"] == "image"
    assert reader.meta == META
    pf = pq.ParquetFile(tmp_path / "tokens" / "shards" / "part-00001.parquet")
    assert json.loads(pf.schema_arrow.metadata[b"videopoet.meta"]) == META
    assert pf.schema_arrow.metadata[b"videopoet.shard_schema"] == b"1"
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] == [4, 4, 2]
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    manifest = load_manifest(url)
    assert manifest["totals"]["rows"] == 30 and manifest["totals"]["rows_by_modality"]["image"] == 6
    assert manifest["totals"]["tokens"]["video"] == sum(
        r["video_tokens"].size for r in rows if "video_tokens" in r
    )


def test_columns_select_and_reshape(dataset):
    url, rows = dataset
    got = list(ShardReader(url, shuffle=False, loop=False, columns=["sample_id", "audio_tokens"]))
    assert set(got[0]) == {"sample_id", "audio_tokens"}
    audio = next(r for r in got if r["audio_tokens"] is not None)
    assert audio["audio_tokens"].shape == (4, 6) and audio["audio_tokens"].dtype == np.int32
    with pytest.raises(UserError, match="no_such_column"):
        ShardReader(url, columns=["no_such_column"])


def test_rank_split_is_disjoint_covering_and_deterministic(dataset):
    url, rows = dataset
    for epoch_skip in (0, 1):
        parts = []
        for rank in range(3):
            r = ShardReader(url, rank=rank, world_size=3, seed=7, loop=False)
            r.load_state_dict({**r.state_dict(), "epoch": epoch_skip})
            parts.append([x["sample_id"] for x in r])
        flat = [s for p in parts for s in p]
        assert len(flat) == len(set(flat)) == len(rows)  # disjoint and covering
        assert all(parts)
    a = [x["sample_id"] for x in ShardReader(url, rank=1, world_size=3, seed=7, loop=False)]
    b = [x["sample_id"] for x in ShardReader(url, rank=1, world_size=3, seed=7, loop=False)]
    c = [x["sample_id"] for x in ShardReader(url, rank=1, world_size=3, seed=8, loop=False)]
    assert a == b and a != c
    unshuffled = [x["sample_id"] for x in ShardReader(url, shuffle=False, loop=False)]
    assert unshuffled == [r["sample_id"] for r in rows]
    with pytest.raises(UserError, match="fewer than world_size"):
        ShardReader(url, rank=0, world_size=100)


def test_resumed_reader_continues_exactly_where_it_stopped(dataset):
    url, rows = dataset
    ref = ShardReader(url, rank=0, world_size=2, seed=3)
    it = iter(ref)
    seen = [next(it)["sample_id"] for _ in range(11)]
    state = json.loads(json.dumps(ref.state_dict()))  # small and JSON-able
    expected = [next(it)["sample_id"] for _ in range(25)]  # runs past the end of the epoch
    resumed = ShardReader(url, rank=0, world_size=2, seed=3)
    resumed.load_state_dict(state)
    it2 = iter(resumed)
    assert [next(it2)["sample_id"] for _ in range(25)] == expected
    n0 = sum(u.rows for u in ref.epoch_units(0))  # this rank's rows in epoch 0
    assert len(set(seen + expected[: n0 - 11])) == n0 < 11 + 25 and resumed.epoch >= 1
    with pytest.raises(UserError, match="world_size"):
        ShardReader(url, rank=0, world_size=3, seed=3).load_state_dict(state)


def test_readable_by_pandas_and_duckdb(dataset):
    url, rows = dataset
    df = pd.read_parquet(f"{url}/shards")
    assert len(df) == len(rows) and set(df["modality"]) == {"video", "image", "audio"}
    assert list(df.loc[0, "video_shape"]) == list(rows[0]["video_tokens"].shape)
    con = duckdb.connect()
    n, tokens, bad = con.execute(
        f"SELECT count(*), sum(num_tokens), "
        f"sum(CASE WHEN len(video_tokens) != list_reduce(video_shape, lambda a, b: a * b) THEN 1 ELSE 0 END) "
        f"FROM '{url}/shards/*.parquet'"
    ).fetchone()
    assert n == len(rows) and tokens == sum(r["num_tokens"] for r in rows) and bad == 0
    by = dict(con.execute(f"SELECT modality, count(*) FROM '{url}/shards/*.parquet' GROUP BY 1").fetchall())
    assert by == {"video": 18, "image": 6, "audio": 6}
    kv = con.execute(
        f"SELECT value FROM parquet_kv_metadata('{url}/shards/part-00000.parquet') "
        "WHERE key = 'videopoet.meta'"
    ).fetchone()[0]
    assert json.loads(kv)["video_tokenizer"]["sha256"] == "1" * 64


def test_check_compatible_names_the_shard_and_the_mismatch(dataset):
    url, _ = dataset
    reader = ShardReader(url)
    reader.check_compatible(
        {
            "video_tokenizer": "1" * 16,
            "audio_tokenizer_sha256": "2" * 64,
            "text_encoder": "minilm:test",
            "text_dim": 8,
            "vocab": Vocab(visual_bits=18, audio_levels=4, audio_codebook_size=1024),
            "vocab_size": 266496,
        }
    )
    reader.check_compatible({"video_tokenizer": "magvit2:cfg-aaa:sha256-1111"})
    with pytest.raises(
        UserError, match=r"part-00000\.parquet.*video tokenizer magvit2:cfg-aaa.*not the expected"
    ):
        reader.check_compatible({"video_tokenizer_sha256": "f" * 64})
    with pytest.raises(
        UserError, match="vocabulary larger than the model's: visual_bits = 10 in the data, 8"
    ):
        reader.check_compatible({"vocab": Vocab(visual_bits=8, audio_levels=4, audio_codebook_size=256)})
    with pytest.raises(UserError, match="needs 2304 ids, the model has 1408"):
        reader.check_compatible({"vocab_size": Vocab.debug().size})
    with pytest.raises(UserError, match="audio RVQ levels"):
        reader.check_compatible({"vocab": {"audio_levels": 2}})
    with pytest.raises(UserError, match="384-d"):
        reader.check_compatible({"text_dim": 384})
    with pytest.raises(UserError, match="unknown key"):
        reader.check_compatible({"video_tokeniser": "x"})


def test_a_dataset_without_audio_fits_a_model_with_a_smaller_audio_vocabulary(tmp_path):
    no_audio = dict(META, audio_tokenizer=None)
    url, _ = write_dataset(tmp_path / "video_only", shards=1, meta=no_audio)
    ShardReader(url).check_compatible({"vocab": Vocab.debug(), "vocab_size": Vocab.debug().size})


def test_a_shard_from_another_tokenizer_is_named(tmp_path):
    url, _ = write_dataset(tmp_path / "mixed", shards=2)
    other = dict(META, video_tokenizer=dict(META["video_tokenizer"], sha256="9" * 64, id="magvit2:other"))
    rs = sorted(make_rows(6, seed=9, shard=9), key=lambda r: r["sample_id"])
    info = write_shard(f"{url}/shards/part-00009.parquet", rs, other, 4)
    manifest = load_manifest(url)
    write_manifest(url, manifest["shards"] + [{"name": "shards/part-00009.parquet", **info}], META)
    with pytest.raises(UserError, match=r"part-00009\.parquet.*video_tokenizer differs from the rest"):
        ShardReader(url).check_compatible({})
    assert any("part-00009" in str(i) and "metadata differs" in str(i) for i in validate_dataset(url))


def test_validate_names_shard_row_group_and_row_of_a_corrupt_token(dataset):
    url, rows = dataset
    assert validate_dataset(url) == []
    # a token outside the 2^10 visual vocabulary, written as a well-formed shard (checksums agree)
    bad = sorted(make_rows(10, seed=1, shard=1), key=lambda r: r["sample_id"])
    bad[6]["video_tokens"] = bad[6]["video_tokens"].copy()
    bad[6]["video_tokens"].flat[3] = 5000
    assert bad[6]["modality"] in ("video", "image")
    info = write_shard(f"{url}/shards/part-00001.parquet", bad, META, 4)
    manifest = load_manifest(url)
    shards = [
        s if s["name"] != "shards/part-00001.parquet" else {"name": s["name"], **info}
        for s in manifest["shards"]
    ]
    write_manifest(url, shards, META)
    issues = validate_dataset(url)
    assert len(issues) == 1, issues
    text = str(issues[0])
    assert "shards/part-00001.parquet, row group 1, row 2" in text and bad[6]["sample_id"] in text
    assert "video_tokens[3] = 5000 is outside the visual vocabulary [0, 1024)" in text


def test_validate_catches_changed_bytes_missing_and_unlisted_shards(dataset, tmp_path):
    url, _ = dataset
    shard = tmp_path / "tokens" / "shards" / "part-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (tmp_path / "tokens" / "shards" / "part-00000.parquet").rename(
        tmp_path / "tokens" / "shards" / "part-00007.parquet"
    )
    text = "\n".join(str(i) for i in validate_dataset(url))
    assert "shards/part-00002.parquet: sha256" in text
    assert "shards/part-00000.parquet: listed in manifest.json but missing" in text
    assert "shards/part-00007.parquet: shard file is not listed" in text


def test_reader_refuses_a_folder_without_manifest(tmp_path):
    (tmp_path / "_state").mkdir()
    with pytest.raises(UserError, match="has not finished"):
        ShardReader(str(tmp_path))
