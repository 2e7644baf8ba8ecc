"""videopoet train-lm: task mixture and one-group batches, exact data resume, bad shards refused before
training, 2-rank DeepSpeed ZeRO-2/3 runs equal to one process, and kill-and-resume equal to an uninterrupted run.

DeepSpeed runs are subprocesses (`python jobs/train_lm.py`, `torchrun --nproc_per_node 2 ...`, gloo,
DS_ACCELERATOR=cpu) of the debug LM on a tiny token dataset (tests/jobs/lm_fixtures.py), 8 steps each.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import lm_fixtures as F
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from videopoet.core.config import load_config
from videopoet.jobs import cli, train_lm, trainer
from videopoet.jobs.lm_data import IMAGE_TASKS, DataConfig, LMData, RowBuilder, TaskWeights
from videopoet.model.sequences import Task
from videopoet.model.vocab import PAD, Vocab

VOCAB = Vocab(**F.VOCAB)
ZERO_TOLERANCE = 1e-4
"""Max |loss difference| per step between a 2-rank ZeRO run and one process with the same global batch
(fp32 on CPU; only the order of the gradient sums differs: measured ~2e-7)."""


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> F.Dataset:
    return F.make_dataset(tmp_path_factory.mktemp("lm_data"))


def lm_data(ds: F.Dataset, *, rank=0, world=1, streams=None, grad_accum=1, max_steps=8, **data) -> LMData:
    cfg = DataConfig(url=ds.url, text_slots=16, streams=streams, **data)
    return LMData(
        cfg,
        vocab=VOCAB,
        text_dim=384,
        seed=0,
        max_steps=max_steps,
        micro_batch=2,
        grad_accum=grad_accum,
        rank=rank,
        world_size=world,
    )


# ---------------------------------------------------------------------------------------------------------
# schedule, mixture, batches


def test_lr_warmup_then_cosine_to_the_floor():
    lr = [trainer.lr_multiplier(s, warmup=10, total=110, min_ratio=0.1) for s in range(111)]
    assert lr[0] == pytest.approx(1 / 11) and all(a < b for a, b in zip(lr[:10], lr[1:11]))
    assert lr[10] == pytest.approx(1.0)
    assert lr[60] == pytest.approx(0.55) and lr[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_image_share_is_90_percent_for_the_first_quarter_then_10_percent(ds):
    data = lm_data(ds, max_steps=4000)
    image = np.array([data.step_task(s) in IMAGE_TASKS for s in range(4000)])
    assert abs(image[:1000].mean() - 0.9) < 0.03, image[:1000].mean()
    assert abs(image[1000:].mean() - 0.1) < 0.02, image[1000:].mean()
    video = [data.step_task(s) for s in range(1000, 4000) if data.step_task(s) not in IMAGE_TASKS]
    counts = {t: video.count(t) / len(video) for t in set(video)}
    w = TaskWeights().weights()
    total = sum(v for t, v in w.items() if t not in IMAGE_TASKS)
    for t, share in counts.items():  # each video task at its weight's share (stylization has weight 0)
        assert abs(share - w[t] / total) < 0.03, (t, share, w[t] / total)
    assert Task.STYLIZATION not in counts
    # every rank draws the same task
    other = lm_data(ds, rank=1, world=2, max_steps=4000)
    assert [other.step_task(s) for s in range(200)] == [data.step_task(s) for s in range(200)]


def test_batches_hold_one_task_of_one_length_from_rows_that_have_what_it_needs(ds):
    data = lm_data(ds, max_steps=40)
    seen = set()
    for step in range(40):
        (mb,) = data.micro_batches(step)
        assert mb.task == data.step_task(step)
        assert (mb.batch.tokens == PAD).sum() == 0, "a micro-batch of one length group needs no padding"
        assert set(mb.batch.task.tolist()) == {int(mb.task)}
        kinds = {sid.split("-")[0] for sid in mb.sample_ids}
        if mb.task in IMAGE_TASKS:
            assert kinds == {"image"}
        elif mb.task in (Task.VIDEO_TO_AUDIO, Task.AUDIO_TO_VIDEO, Task.AUDIO_VIDEO_CONTINUATION):
            assert kinds == {"av"}, "audio tasks only on rows with audio"
        elif mb.task == Task.TEXT_TO_VIDEO:
            assert kinds == {"av"}, "text-to-video only on rows with a caption"
        else:
            assert kinds <= {"av", "video"}
        if mb.text is not None:
            assert mb.text.shape == (2, 16, 384)
        seen.add(mb.task)
    assert len(seen) >= 6, seen
    assert data.skipped_rows >= 1, "the audio-only row is read and skipped"


def test_text_dropout_rate(ds):
    rows = [r for r in ds.rows if r["modality"] == "image"]
    b = RowBuilder(DataConfig(url=ds.url, text_slots=16, text_dropout=0.1), VOCAB, 384)
    rng = np.random.default_rng(0)
    n = [b.build(Task.TEXT_TO_IMAGE, rows[i % len(rows)], rng)[2] for i in range(1000)]
    dropped = sum(1 for k in n if k == 0) / len(n)
    assert 0.07 < dropped < 0.13, dropped
    assert max(n) == 16, "captions longer than text_slots are truncated to it"


def test_a_fixed_number_of_streams_gives_the_same_global_batch_on_any_number_of_ranks(ds):
    one = lm_data(ds, streams=2, grad_accum=2)
    two = [lm_data(ds, rank=r, world=2, streams=2) for r in range(2)]
    for step in range(6):
        a = one.micro_batches(step)
        b = [two[r].micro_batches(step)[0] for r in range(2)]
        assert [m.sample_ids for m in a] == [m.sample_ids for m in b]
        for x, y in zip(a, b):
            assert torch.equal(x.batch.tokens, y.batch.tokens)


def test_data_state_resumes_exactly_with_rows_waiting_in_the_buffers(ds):
    a = lm_data(ds, max_steps=20)
    for step in range(5):
        a.micro_batches(step)
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint keeps
    assert any(st["live"] for st in state.values()), "the test needs buffered rows at the checkpoint"
    after = [a.micro_batches(s) for s in range(5, 12)]
    b = lm_data(ds, max_steps=20)
    b.load_state_dict(state)
    for s, ref in zip(range(5, 12), after):
        got = b.micro_batches(s)
        assert [m.sample_ids for m in got] == [m.sample_ids for m in ref]
        assert torch.equal(got[0].batch.tokens, ref[0].batch.tokens)
        assert torch.equal(got[0].batch.prefix_len, ref[0].batch.prefix_len)
        assert (got[0].text is None) == (ref[0].text is None)
        if ref[0].text is not None:
            assert torch.equal(got[0].text, ref[0].text)


# ---------------------------------------------------------------------------------------------------------
# shards that do not fit are refused before training


def test_mismatched_or_too_large_shards_are_refused_naming_the_shard(ds, tmp_path, capsys):
    other_tok = dict(
        ds.meta, video_tokenizer=dict(ds.meta["video_tokenizer"], sha256="0" * 64, id="magvit2:other")
    )
    mixed = F.write_dataset(tmp_path / "mixed", ds.rows, ds.meta, shard_metas={1: other_tok})
    big = F.write_dataset(
        tmp_path / "big",
        ds.rows,
        F.shard_meta(ds.video_tokenizer, ds.audio_tokenizer, ds.meta["text_encoder"]["id"], 12),
    )
    cases = [
        (mixed, [], ["part-00001.parquet", "video_tokenizer differs"]),
        (
            big,
            [],
            [
                "part-00000.parquet",
                "visual_bits = 12 in the data, 10 in the model",
                "pass model.visual_bits=null",
            ],
        ),
        (
            ds.url,
            ["data.expect_video_tokenizer=" + "f" * 16],
            ["part-00000.parquet", "not the expected ffff"],
        ),
    ]
    for url, extra, needles in cases:
        out = tmp_path / f"run_{Path(url).name}"
        debug = str(F.REPO_ROOT / "configs/train_lm_debug.yaml")
        assert cli.run("train-lm", ["--config", debug, f"data.url={url}", f"output={out}", *extra]) == 1
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, (needle, err)
        assert not out.exists(), "refused before any training"


# ---------------------------------------------------------------------------------------------------------
# DeepSpeed runs


def _args(ds: F.Dataset, out: Path, *extra: str) -> list[str]:
    return [f"data.url={ds.url}", f"output={out}", "data.streams=2", *extra]


def _check(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]


@pytest.fixture(scope="module")
def reference(ds, tmp_path_factory) -> Path:
    """One process, 2 streams x 2 accumulated micro-batches of 2: the global batch of 2 ranks x 2."""
    out = tmp_path_factory.mktemp("ref")
    _check(F.train(_args(ds, out, "train.grad_accum=2")))
    return out


def test_one_process_run_writes_metrics_checkpoints_and_an_export(reference):
    losses = F.losses(reference)
    assert sorted(losses) == list(range(1, 9))
    assert all(math.isfinite(v) for _, v in losses.values())
    assert losses[8][1] < losses[1][1] - 0.05, "8 steps on the patterned tokens lower the loss"
    recs = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 and r["lr"] > 0 for r in recs)
    assert list((reference / "tb").glob("events.out.tfevents.*"))
    assert (reference / "config.yaml").is_file() and (reference / "checkpoints" / "latest").is_file()
    info = json.loads((reference / "config.json").read_text())
    assert info["vocab"] == F.VOCAB and info["step"] == 8
    state = load_file(str(reference / "model.safetensors"))
    assert state["lm_head.weight"].shape == (VOCAB.size, 64)


# ZeRO-3 (parameters, gradients and optimizer state partitioned) runs by default; ZeRO-2 with the slow suite
# (the one-process reference and the resume test already train with ZeRO-2). The 2-rank runs keep the head's
# logits for the backward (the reference recomputes them): the same gradients, under ZeRO-3's gathered head too.
@pytest.mark.parametrize("stage", [pytest.param(2, marks=pytest.mark.slow), 3])
def test_two_rank_zero_run_matches_one_process(ds, reference, tmp_path, stage):
    out = tmp_path / f"zero{stage}"
    extra = (f"train.ds_config=configs/ds/zero{stage}.json", "train.ce_keep_logits=true")
    _check(F.train(_args(ds, out, *extra), nproc=2))
    ref, got = F.losses(reference), F.losses(out)
    assert [t for t, _ in got.values()] == [t for t, _ in ref.values()]
    for step in ref:
        assert abs(got[step][1] - ref[step][1]) < ZERO_TOLERANCE, (step, got[step], ref[step])
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4, "consolidated weights of the 2-rank run"
    # MFU counts the whole model's FLOPs on every ZeRO stage (ZeRO-3 ranks hold 1/world of each parameter)
    peak_world = {}
    for run, world in ((reference, 1), (out, 2)):
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        peak_world[run] = {(r["step"], r["seq_len"]): r["mfu"] / r["tokens_per_s"] * world for r in recs}
    assert peak_world[reference].keys() == peak_world[out].keys()
    for k, v in peak_world[reference].items():
        assert peak_world[out][k] == pytest.approx(v, rel=1e-9), k


def test_stopped_and_resumed_run_reproduces_the_uninterrupted_one_exactly(ds, reference, tmp_path):
    out = tmp_path / "resumed"
    args = _args(ds, out, "train.grad_accum=2")
    _check(F.train([*args, "train.stop_at=3"]))
    assert sorted(F.losses(out)) == [1, 2, 3] and not (out / "model.safetensors").exists()
    _check(F.train(args))
    assert F.losses(out) == F.losses(reference)
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_configs_load_and_document_every_key():
    for name in ("train_lm.yaml", "train_lm_debug.yaml"):
        cfg = load_config(train_lm.Config, str(F.REPO_ROOT / "configs" / name), ["data.url=x", "output=y"])
        assert cfg.train.max_steps >= 1
    gpu = load_config(train_lm.Config, str(F.REPO_ROOT / "configs/train_lm.yaml"), ["data.url=x", "output=y"])
    ds_cfg = trainer.build_ds_config(gpu.train, world_size=8, cuda=True)
    assert ds_cfg["bf16"]["enabled"] and ds_cfg["zero_optimization"]["overlap_comm"]
    assert ds_cfg["train_batch_size"] == gpu.train.micro_batch * gpu.train.grad_accum * 8
    for stage in (1, 2, 3):
        d = json.loads((F.REPO_ROOT / f"configs/ds/zero{stage}.json").read_text())
        assert d["zero_optimization"]["stage"] == stage and d["optimizer"]["params"]["torch_adam"]
