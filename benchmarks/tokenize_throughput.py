"""Tokenization throughput of the tokenize job's data path against bare MAGVIT-v2 encoding, same run.

    uv run python benchmarks/tokenize_throughput.py                       # debug tokenizers, CPU
    uv run python benchmarks/tokenize_throughput.py --clips 48 --ray      # also through Ray Data
    uv run python benchmarks/tokenize_throughput.py --magvit ckpt/magvit --soundstream ckpt/ss --device cuda

Inputs: a curated `clips/` table of real clips from tests/assets (3 s videos with and without sound and
captions, repeated under distinct clip ids), one 17-frame 8 fps window each, and debug-size tokenizer
checkpoints (random weights, made here) unless given. It measures windows per second of:
- bare: `MagvitV2.encode` alone on ready (B, 3, 17, 128, 128) tensors at the job's batch size, on the
  same device and thread count as one tokenizer worker - what the tokenizer can do at best (on CUDA the
  fastest of: contiguous, channels_last_3d input, channels_last_3d input and weights, and that compiled as
  the job's GPU workers run it with video.compile, the default; `--set video.compile=false` leaves it out);
- path (in-process): the job's stages (`WindowDecodeStage` -> the tokenizer worker's `ChainStage`:
  MAGVIT-v2, SoundStream, caption embeddings) run one after the other in this process, as one Ray
  worker pair would without overlap;
- path (Ray, --ray): the real job (`jobs/tokenize_shards.py`) on an embedded Ray with one tokenizer
  worker (`pool.cpus` = --threads) and one decode task beside it, decoding overlapping tokenizing. Two
  runs, on --batch-windows and on --clips windows; the marginal windows/s between them excludes the
  start-up both pay (Ray Data plan, worker processes, model loading). Use several thousand windows on
  a GPU (`--clips 6336`): start-up varies by a second or more between runs. The marginal figure still
  counts some start-up: in the large run the decode tasks fill the object store while the GPU worker loads
  and compiles its models, on the same CPUs, so its start-up is longer. Also printed: the steady state of
  the large run (windows committed between its 20% and 95% shards over that time) and how many of the
  machine's CPUs were busy on average; with --cpu-census, which processes and threads used them in the
  steady window (no saturated thread means the job waits on latency, not on a CPU);
- worker alone (--worker): the tokenizer worker's `ChainStage` on ready decoded blocks from
  `pool.concurrent_calls` threads, as a GPU worker runs them: the ceiling without decoding and Ray.
Target: path / bare >= 0.8 (meant for the GPU, where decoding runs on other cores than the encoder).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_inputs(root: Path, clips: int) -> Path:
    """A curated folder with `clips` clips (distinct ids) over two real 3 s videos."""
    import hashlib

    import pyarrow.parquet as pq

    from videopoet.pipelines.media import decode_audio, wav_bytes
    from videopoet.pipelines.schema import CLIP_SCHEMA, to_table

    assets = REPO / "tests" / "assets"
    cur = root / f"curated-{clips}"
    if cur.exists():
        return cur
    (cur / "clips").mkdir(parents=True)
    launch = assets / "video_launch_3s.mp4"
    wav = root / "launch.wav"
    if not wav.exists():
        wav.write_bytes(wav_bytes(decode_audio(str(launch), start_s=0.0, end_s=3.0), 16000))
    rows = []
    for i in range(clips):
        base = dict(modality="video", start_s=0.0, end_s=3.0, width=256, height=144)
        if i % 2 == 0:
            row = dict(
                base, uri=str(launch), fps=24.0, audio_uri=str(wav), caption=f"a rocket launch, take {i}"
            )
        else:
            row = dict(base, uri=str(assets / "video_cockatoo_3s.mp4"), fps=20.0)
        cid = hashlib.sha1(f"bench-{i}".encode()).hexdigest()
        rows.append(dict(row, clip_id=cid, input_id=cid))
    pq.write_table(to_table(rows, CLIP_SCHEMA), cur / "clips" / "part-00000.parquet")
    return cur


def _windows_per_s(encode, x, windows: int, device: str) -> float:
    """Windows per second of `encode(x)` (a batch of x.shape[0] windows) over at least `windows`, warmed up."""
    import torch

    with torch.inference_mode():
        encode(x)  # warm-up
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        done = 0
        while done < windows:
            encode(x)
            done += x.shape[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def bare_encode(
    magvit: str,
    windows: int,
    batch: int,
    device: str,
    threads: int,
    profile: bool = False,
    compiled: bool = True,
) -> tuple[float, str]:
    import torch

    from videopoet.tokenizers.magvit2 import MagvitV2

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32  # what the job's GPU workers use
    model = MagvitV2.from_pretrained(magvit, device=device, dtype=dtype)
    x = (torch.rand(batch, 3, 17, 128, 128, device=device) * 2 - 1).to(dtype)
    layouts = [(_windows_per_s(model.encode, x, windows, device), "contiguous")]
    if device.startswith("cuda"):
        # The job's workers hand MAGVIT-v2 permuted (B, T, H, W, 3) pixels: channels_last_3d strides, which cuDNN
        # runs faster in bf16 than contiguous ones (388 vs 353 windows/s on the H100). The bare figure is the
        # fastest layout, so the job is never compared with a slower baseline than it could reach.
        cl = x.contiguous(memory_format=torch.channels_last_3d)
        layouts.append((_windows_per_s(model.encode, cl, windows, device), "channels_last_3d input"))
        if profile:
            print(
                device_profile(
                    lambda: [model.encode(cl) for _ in range(8)], "bare encode, channels_last_3d input"
                )
            )
        model.channels_last_()
        layouts.append(
            (_windows_per_s(model.encode, cl, windows, device), "channels_last_3d input and weights")
        )
        if compiled:  # what the job's GPU workers run with video.compile (the default)
            model.encoder.compile(dynamic=False)
            model.encode(cl)  # compiles, not timed
            layouts.append((_windows_per_s(model.encode, cl, windows, device), "compiled, channels_last_3d"))
        print(
            "  bare MAGVIT-v2 layouts: "
            + ", ".join(f"{how} {wps:.1f}" for wps, how in layouts)
            + " windows/s"
        )
    return max(layouts)


def bare_audio_encode(soundstream: str, windows: int, batch: int, device: str, threads: int) -> float:
    """Seconds per audio window of bare `SoundStream.encode` on ready (B, 2.125 s) 16 kHz waves (fp32, as
    the job's audio stage runs it)."""
    import torch

    from videopoet.pipelines.tokenize_stages import WindowConfig
    from videopoet.tokenizers.soundstream import SoundStream

    torch.set_num_threads(threads)
    model = SoundStream.from_pretrained(soundstream, device=device)
    x = torch.rand(batch, WindowConfig().audio_samples, device=device) * 0.2 - 0.1
    return 1.0 / _windows_per_s(model.encode, x, windows, device)


def config(curated: Path, out: Path, args, extra: list[str]):
    from videopoet.core.config import load_config
    from videopoet.jobs import tokenize_shards

    given = {  # None: the job's own setting (configs/tokenize.yaml)
        "pool.calls_in_flight": args.calls_in_flight,
        "pool.concurrent_calls": args.concurrent_calls,
        "window.clips_per_task": args.clips_per_task,
    }
    return load_config(
        tokenize_shards.Config,
        str(REPO / "configs" / "tokenize.yaml"),
        [
            f"input={curated}",
            f"output={out}",
            f"video.checkpoint={args.magvit}",
            f"audio.checkpoint={args.soundstream}",
            f"video.batch_size={args.batch}",
            f"pool.device={args.device.split(':')[0]}",
            f"pool.cpus={args.threads}",
            f"pool.pad_batches={str(not args.no_pad).lower()}",
            f"pool.workers_per_gpu={args.workers_per_gpu}",
            *(f"{key}={v}" for key, v in given.items() if v is not None),
            *(["text.enabled=false"] if args.no_text else []),
            *args.set,
            *extra,
        ],
    )


def job_stages(curated: Path, root: Path, args):
    """(clip rows, decode stage, tokenizer-worker chain) of the job, set up: model loading is start-up, not
    throughput."""
    from videopoet.jobs import tokenize_shards

    cfg = config(curated, root / "unused", args, [f"batch_windows={args.batch_windows}"])
    clips = [dict(c, partition=0, status="ok") for c in tokenize_shards.read_clips(str(curated))]
    decode, chain = tokenize_shards.build_stages(
        cfg, cluster_has_gpu=args.device.startswith("cuda"), num_cpus=args.threads + 1, num_gpus=1
    )
    chain.setup()
    decode.setup()
    return clips, decode, chain


def decoded_block(decode, clips: list[dict]):
    """The decode tasks' output block for `clips`: an Arrow table, as the worker receives it."""
    import pyarrow as pa

    from videopoet.pipelines.base import rows_to_frame, run_local

    return pa.Table.from_pandas(rows_to_frame(run_local([decode], clips)), preserve_index=False)


def path_in_process(curated: Path, root: Path, args) -> float:
    import torch

    from videopoet.pipelines.base import run_local

    clips, decode, chain = job_stages(curated, root, args)
    run_local([decode, chain], clips[: args.batch])  # warm-up
    clips = clips[: args.in_process_clips]
    prof = None
    if args.profile_chain:
        import cProfile

        prof = cProfile.Profile()
    t0 = time.perf_counter()
    t_chain = 0.0
    for i in range(0, len(clips), args.batch_windows):
        block = decoded_block(decode, clips[i : i + args.batch_windows])
        t1 = time.perf_counter()
        if prof is not None:
            prof.enable()
        out = chain(block)  # as a Ray worker call: an Arrow batch in, an Arrow block out
        if prof is not None:
            prof.disable()
        t_chain += time.perf_counter() - t1
        assert _all_tokenized(out), out.to_pylist()[0].get("reject_detail")
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    print(
        f"  in-process: decode {total - t_chain:.2f} s, tokenizer calls {t_chain:.2f} s for {len(clips)} windows"
    )
    if prof is not None:
        import pstats

        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return len(clips) / total


def _all_tokenized(out) -> bool:
    """Every window of a tokenizer-worker call's output (an Arrow table) has video tokens."""
    return "video_tokens" in out.column_names and out.column("video_tokens").null_count == 0


def worker_ceiling(curated: Path, root: Path, args) -> float:
    """Windows/s of the tokenizer worker alone: the job's `ChainStage` called on ready decoded Arrow blocks
    of --batch-windows windows from --concurrent-calls threads at once, as a Ray GPU worker runs them (no
    decoding, no Ray). What the job could reach if decoding and Ray's plumbing cost nothing."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    clips, decode, chain = job_stages(curated, root, args)
    size = min(args.batch_windows, len(clips))  # fewer clips than a call holds: one call of them all
    n = min(len(clips), 8 * size)  # decoded once, then fed round and round
    blocks = [decoded_block(decode, clips[i : i + size]) for i in range(0, n - size + 1, size)]
    threads = chain.concurrent_calls if args.device.startswith("cuda") else 1
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(chain, blocks[:threads]))  # warm-up
        calls = [blocks[i % len(blocks)] for i in range(max(len(blocks), len(clips) // size))]
        t0 = time.perf_counter()
        outs = list(pool.map(chain, calls))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        if args.profile_worker:
            print(
                device_profile(lambda: list(pool.map(chain, calls[: 4 * threads])), "tokenizer worker alone")
            )
    assert all(_all_tokenized(o) for o in outs)
    return sum(len(b) for b in calls) / wall


def device_profile(fn, what: str) -> str:
    """torch.profiler over `fn()`: wall time, the summed kernel time (over all streams) and the top kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync()
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        fn()
        sync()
    wall = time.perf_counter() - t0
    kernels = sum(e.self_device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA") / 1e6
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60)
    return (
        f"\n== device profile: {what}: {wall:.3f} s wall (profiled), kernels {kernels:.3f} s summed over streams "
        f"({kernels / wall:.2f} of the wall) ==\n{table}"
    )


def _busy_cpu_s() -> float | None:
    """CPU-seconds this machine has spent busy (all processes, from /proc/stat; None elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuCensus:
    """CPU time of every thread of every process on this machine (Linux /proc), sampled every `period` s on
    a background thread while a run is on, so a report can say afterwards which processes and threads were
    busy between two moments (the steady window): is one thread at 100% of a core, or is nothing saturated?
    Threads that exit keep their last sample (Ray Data's workers exit when the run ends)."""

    def __init__(self, period: float = 0.5):
        self.period, self.samples, self.names = period, [], {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cpu-census")

    @staticmethod
    def snapshot() -> dict[tuple[int, int], tuple[str, str, float]]:
        """{(pid, tid): (command line, thread name, CPU seconds)} of every readable thread."""
        tick, out = os.sysconf("SC_CLK_TCK"), {}
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                for tid in os.listdir(f"/proc/{pid}/task"):
                    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                    name = stat[stat.index("(") + 1 : stat.rindex(")")]
                    f = stat[stat.rindex(")") + 2 :].split()
                    out[(int(pid), int(tid))] = (cmd.strip(), name, (int(f[11]) + int(f[12])) / tick)
            except (OSError, ValueError):  # a process or thread that ended meanwhile
                continue
        return out

    def _loop(self) -> None:
        last: dict = {}
        while True:
            last = {**last, **self.snapshot()}
            self.names.update({t.native_id: t.name for t in threading.enumerate()})
            self.samples.append((time.time(), last))
            if self._stop.wait(self.period):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, t0: float, t1: float, top: int = 8) -> str:
        """Processes by CPU used between wall-clock times t0 and t1 (% of one core), with their busiest threads."""
        a = min(self.samples, key=lambda x: abs(x[0] - t0))
        b = min(self.samples, key=lambda x: abs(x[0] - t1))
        span = max(1e-9, b[0] - a[0])
        procs: dict[int, list] = {}
        for (pid, tid), (cmd, name, cpu) in b[1].items():
            used = cpu - a[1].get((pid, tid), (0, 0, 0.0))[2]
            if used > 0:
                name = f"this process: {self.names.get(tid, name)}" if pid == os.getpid() else name
                p = procs.setdefault(pid, [0.0, cmd, []])
                p[0] += used
                p[2].append((used, name))
        rows = sorted(procs.items(), key=lambda kv: -kv[1][0])
        lines = [
            f"  CPU census over {span:.1f} s: {sum(p[0] for p in procs.values()) / span:.1f} cores busy in all"
        ]
        for pid, (used, cmd, threads) in rows[:top]:
            busiest = ", ".join(f"{n} {100 * u / span:.0f}%" for u, n in sorted(threads, reverse=True)[:4])
            lines.append(f"    {100 * used / span:5.0f}%  pid {pid} {cmd[:50]:50s} | {busiest}")
        return "\n".join(lines)


def path_ray(root: Path, args) -> tuple[float | None, float | None]:
    """The real job on an embedded Ray: (marginal, steady) windows/s. Marginal is (N - n) / (T(N) - T(n))
    from a run on n = --batch-windows and one on N = --clips windows (None unless N > n), so the start-up
    both pay (Ray Data plan, worker processes, model loading) cancels out; steady is `_steady_rate` of the
    N-window run (None when it has under 10 shards)."""
    from videopoet.core.ray_runtime import RayConfig, init_ray
    from videopoet.jobs import tokenize_shards

    cpus = args.ray_cpus or args.threads + 1
    store = args.object_store_mb or max(512, 256 * cpus)
    init_ray(RayConfig(num_cpus=cpus, object_store_memory_mb=store, log_to_driver=False))
    small, large = max(1, args.batch_windows), args.clips
    wall = {}
    for n in (small, small, large):  # the first run warms caches (imports, files) that later runs reuse
        curated = make_inputs(root, n)
        extra = [f"batch_windows={args.batch_windows}", f"clips_per_shard={args.batch_windows}"]
        out = root / f"ray-out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        busy0, t0 = _busy_cpu_s(), time.perf_counter()
        with CpuCensus() if args.cpu_census and n == large else contextlib.nullcontext() as census:
            tokenize_shards.main(config(curated, out, args, extra))
        wall[n] = time.perf_counter() - t0
        busy = (_busy_cpu_s() - busy0) / wall[n] if busy0 is not None else float("nan")
        print(
            f"  job on {n:3d} windows: {wall[n]:6.1f}s wall (start-up included), {busy:.1f} of "
            f"{os.cpu_count()} CPUs busy on average"
        )
    steady, window = _steady_rate(root / f"ray-out-{large}" / "shards")
    if args.cpu_census and window is not None:
        print(f"Where the CPUs went in the steady window of the {large}-window run:")
        print(census.report(*window))
    if args.stats:
        print(f"Ray Data stats of the {large}-window run:\n{tokenize_shards.LAST_DATASET.stats()}")
    if large <= small:
        return None, steady
    return (large - small) / max(1e-9, wall[large] - wall[small]), steady


def _steady_rate(shards: Path) -> tuple[float | None, tuple[float, float] | None]:
    """(windows/s, (start, end) wall-clock times) between the commits of the 20% and the 95% shard (by commit
    time) of a finished run; (None, None) under 10 shards."""
    import pyarrow.parquet as pq

    done = sorted(
        (p.stat().st_mtime, pq.ParquetFile(p).metadata.num_rows) for p in shards.glob("part-*.parquet")
    )
    if len(done) < 10:
        return None, None
    a, b = int(0.2 * len(done)), int(0.95 * len(done))
    rate = sum(n for _, n in done[a + 1 : b + 1]) / max(1e-9, done[b][0] - done[a][0])
    return rate, (done[a][0], done[b][0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=48, help="windows tokenized (one per clip)")
    ap.add_argument("--batch", type=int, default=8, help="MAGVIT-v2 batch size (video.batch_size)")
    ap.add_argument(
        "--batch-windows",
        type=int,
        default=None,
        help="windows per tokenizer-worker call (default: the job's)",
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads of one tokenizer worker (pool.cpus)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--magvit", default=None, help="MAGVIT-v2 checkpoint (default: a debug one made here)")
    ap.add_argument("--soundstream", default=None, help="SoundStream checkpoint (default: a debug one)")
    ap.add_argument("--ray", action="store_true", help="also time the real job on an embedded Ray")
    ap.add_argument(
        "--ray-cpus",
        type=int,
        default=None,
        help="CPUs of the embedded Ray (default: --threads + 1, one decode task beside the worker; on a GPU "
        "machine give its cores so decode tasks run in parallel)",
    )
    ap.add_argument(
        "--object-store-mb", type=int, default=None, help="Ray object store (default 256 MiB per CPU)"
    )
    ap.add_argument("--profile-chain", action="store_true", help="cProfile the tokenizer calls (in-process)")
    ap.add_argument(
        "--worker", action="store_true", help="also time the tokenizer worker alone on ready decoded blocks"
    )
    ap.add_argument(
        "--profile-worker",
        action="store_true",
        help="torch.profiler (CUDA kernels) over a few bare encodes and a few worker-alone calls (with --worker)",
    )
    ap.add_argument("--no-in-process", action="store_true", help="skip the serial in-process path")
    ap.add_argument(
        "--in-process-clips", type=int, default=512, help="windows the serial in-process path runs (at most)"
    )
    ap.add_argument(
        "--calls-in-flight", type=int, default=None, help="pool.calls_in_flight (default: the job's)"
    )
    ap.add_argument(
        "--concurrent-calls",
        type=int,
        default=None,
        help="pool.concurrent_calls of GPU workers (default: the job's)",
    )
    ap.add_argument("--workers-per-gpu", type=int, default=1, help="pool.workers_per_gpu")
    ap.add_argument(
        "--clips-per-task", type=int, default=None, help="window.clips_per_task (default: the job's)"
    )
    ap.add_argument("--set", action="append", default=[], help="more tokenize config overrides, KEY=VALUE")
    ap.add_argument("--stats", action="store_true", help="print Ray Data's per-operator stats of the Ray run")
    ap.add_argument(
        "--cpu-census",
        action="store_true",
        help="sample every thread's CPU time (/proc) during the large Ray run; print the busiest processes and "
        "threads over its steady window",
    )
    ap.add_argument("--no-text", action="store_true", help="text.enabled=false (no caption encoder)")
    ap.add_argument("--no-pad", action="store_true", help="pool.pad_batches=false (short batches not padded)")
    args = ap.parse_args()
    job = config(Path("unused"), Path("unused"), args, [])  # the job's settings where no flag is given
    resolved = {
        "batch_windows": job.batch_windows,
        "clips_per_task": job.window.clips_per_task,
        "calls_in_flight": job.pool.calls_in_flight,
        "concurrent_calls": job.pool.concurrent_calls,
    }
    for key, value in resolved.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    root = Path(tempfile.mkdtemp(prefix="videopoet-tok-bench-"))
    try:
        if args.magvit is None or args.soundstream is None:
            sys.path.insert(0, str(REPO / "tests" / "jobs"))
            from tokenize_fixtures import make_checkpoints

            magvit, sound = make_checkpoints(root)
            args.magvit, args.soundstream = args.magvit or str(magvit), args.soundstream or str(sound)
        curated = make_inputs(root, args.clips)
        bare, layout = bare_encode(
            args.magvit,
            args.clips,
            args.batch,
            args.device,
            args.threads,
            args.profile_worker,
            compiled=job.video.compile,
        )
        print(
            f"bare MAGVIT-v2 encode:   {bare:8.2f} windows/s  (batch {args.batch}, {args.device}, {args.threads} "
            f"thread(s), {layout})"
        )
        # the job also runs SoundStream on the windows with sound (every second clip here)
        audio_s = bare_audio_encode(args.soundstream, args.clips // 2, 32, args.device, args.threads)
        bare_all = 1.0 / (1.0 / bare + 0.5 * audio_s)
        print(
            f"bare MAGVIT-v2 + SoundStream: {bare_all:8.2f} windows/s  (SoundStream {audio_s * 1e3:.2f} ms per "
            "audio window, half the windows have sound)"
        )
        if not args.no_in_process:
            local = path_in_process(curated, root, args)
            print(
                f"job path, in-process:    {local:8.2f} windows/s  ratio {local / bare:.2f}  (decode + video + audio + text, serial)"
                f"; {local / bare_all:.2f} of both tokenizers"
            )
        if args.worker:
            ceiling = worker_ceiling(curated, root, args)
            print(
                f"tokenizer worker alone:  {ceiling:8.2f} windows/s  ratio {ceiling / bare:.2f}  (decoded blocks, "
                f"{args.concurrent_calls if args.device.startswith('cuda') else 1} concurrent call(s), no Ray)"
            )
        if args.ray:
            ray_wps, steady = path_ray(root, args)
            if ray_wps is None:
                print(f"job path, Ray (marginal): needs --clips > --batch-windows ({args.batch_windows})")
            else:
                print(
                    f"job path, Ray (marginal): {ray_wps:7.2f} windows/s  ratio {ray_wps / bare:.2f}"
                    f"; {ray_wps / bare_all:.2f} of both tokenizers"
                )
            if steady:
                print(
                    f"job path, Ray (steady):   {steady:7.2f} windows/s  ratio {steady / bare:.2f}; "
                    f"{steady / bare_all:.2f} of both tokenizers  (the large run between the commits of its 20% "
                    "and 95% shards: start-up and the final drain excluded)"
                )
        print("target: job path / bare >= 0.8")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
