"""The demo's HTML report: steps and times, curation summary, token shards, training curves, generations.

    url = write_report(demo, state)     # OUT/report/index.html, the MP4s under OUT/report/media/

The report folder is self-contained: the page refers only to files inside it (media/ and the shard
report under shards/), charts are inline SVG, so the folder can be copied or served as it is. Each
<video> gets `data-state="loaded"` once the browser has decoded it, or an error note beside it when the
browser cannot play it (tests/jobs/test_demo.py checks this in headless Chromium).
"""

from __future__ import annotations

import html
import json
import os
import platform
import shutil
import time

from videopoet.core.io import atomic_write_text, join
from videopoet.core.log import get_logger
from videopoet.pipelines.shard_report import _CSS, _PALETTE, _fmt

log = get_logger("videopoet.demo")
esc = html.escape

STEP_ROWS = (
    ("sample-data", "real media from Debian packages"),
    ("curate", "clips kept / rejected with reasons"),
    ("tokenize", "LM token shards"),
    ("tokenize-sr", "super-resolution token pairs"),
    ("inspect", "shard validation and previews"),
    ("train-lm", "the LM"),
    ("train-sr", "the super-resolution stage"),
    ("generate", "videos from the trained LM"),
)

_EXTRA_CSS = """
.note{background:#fff8e1;border:1px solid #f0dca0;padding:8px 12px;font-size:13px;max-width:980px}
.gens{display:flex;flex-wrap:wrap;gap:18px} .gen{background:#fff;border:1px solid #e3e3e3;padding:10px;width:560px}
.gen h3{font-size:15px;margin:0 0 6px} .pair{display:flex;gap:10px;align-items:flex-start}
.pair figure{border:none;padding:0} video,.gen img{width:256px;height:auto;background:#000;display:block;image-rendering:pixelated}
.small{font-size:12px;color:#555} table.steps td:nth-child(2),table.steps td:nth-child(3){text-align:left}
"""

_SCRIPT = """
<script>
document.querySelectorAll('video').forEach(function (v) {
  function ok() { v.dataset.state = 'loaded'; }
  v.addEventListener('loadeddata', ok);
  v.addEventListener('error', function () {
    v.dataset.state = 'error';
    v.insertAdjacentHTML('afterend', '<p class="bad">this browser cannot play ' + v.getAttribute('src') + '</p>');
  });
  if (v.readyState >= 2) ok();
});
</script>
"""


# ---------------------------------------------------------------------------------------------------------
# small readers


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def read_metrics(path: str) -> list[dict]:
    """metrics.jsonl of a trainer: one record per logged step (step, task, loss, ...)."""
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    return [r for r in rows if isinstance(r.get("step"), int) and isinstance(r.get("loss"), int | float)]


# ---------------------------------------------------------------------------------------------------------
# charts


def svg_bars(title: str, items: list[tuple[str, float]], *, width: int = 460, bar_h: int = 18) -> str:
    """Horizontal bars as inline SVG (the shard report's style), with room for long labels such as
    `dedup:duplicate_near`."""
    if not items:
        return f'<figure><figcaption>{esc(title)}</figcaption><p class="empty">none</p></figure>'
    label_w, pad = 12 + 7 * max(len(str(k)) for k, _ in items), 6
    top = max(v for _, v in items) or 1
    h = pad + len(items) * (bar_h + pad)
    width = max(width, label_w + 160)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, (label, v) in enumerate(items):
        y = pad + i * (bar_h + pad)
        w = max(1.0, (width - label_w - 70) * v / top)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 5}" text-anchor="end" font-size="12">{esc(str(label))}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{_PALETTE[i % len(_PALETTE)]}"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 5}" font-size="12">{_fmt(v)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{esc(title)}</figcaption>{''.join(parts)}</figure>"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def svg_curve(
    title: str, records: list[dict], *, width: int = 640, height: int = 260, window: int = 5
) -> str:
    """Loss per logged step as inline SVG: a dot per step coloured by its task, and a running mean line."""
    if not records:
        return f'<figure><figcaption>{esc(title)}</figcaption><p class="empty">no metrics yet</p></figure>'
    left, right, top, bottom = 52, 14, 12, 34
    steps = [r["step"] for r in records]
    losses = [float(r["loss"]) for r in records]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(losses), max(losses)
    if y1 - y0 < 1e-6:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def X(s: float) -> float:
        return left + (pw * (s - x0) / (x1 - x0) if x1 > x0 else pw / 2)

    def Y(v: float) -> float:
        return top + ph * (1 - (v - y0) / (y1 - y0))

    tasks = sorted({str(r.get("task", "all")) for r in records})
    color = {t: _PALETTE[i % len(_PALETTE)] for i, t in enumerate(tasks)}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for v in _ticks(y0 + pad, y1 - pad):
        parts.append(
            f'<line x1="{left}" y1="{Y(v):.1f}" x2="{width - right}" y2="{Y(v):.1f}" stroke="#e5e5e5"/>'
            f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.2f}</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{top + ph}" x2="{width - right}" y2="{top + ph}" stroke="#555"/>'
        f'<text x="{left}" y="{height - 16}" font-size="11">step {x0}</text>'
        f'<text x="{width - right}" y="{height - 16}" font-size="11" text-anchor="end">step {x1}</text>'
        f'<text x="{left + pw / 2:.0f}" y="{height - 4}" font-size="11" text-anchor="middle">optimizer step</text>'
    )
    for r in records:
        parts.append(
            f'<circle cx="{X(r["step"]):.1f}" cy="{Y(float(r["loss"])):.1f}" r="3" '
            f'fill="{color[str(r.get("task", "all"))]}"><title>step {r["step"]} {esc(str(r.get("task", "")))}: '
            f"{float(r['loss']):.4f}</title></circle>"
        )
    mean = []
    for i in range(len(losses)):
        chunk = losses[max(0, i - window + 1) : i + 1]
        mean.append(sum(chunk) / len(chunk))
    pts = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in zip(steps, mean))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#222" stroke-width="1.5"/>')
    parts.append("</svg>")
    legend = (
        " ".join(f'<span style="color:{color[t]}">&#9679;</span>&nbsp;{esc(t)}' for t in tasks)
        + f' &nbsp; <span class="small">line: mean of the last {window} logged steps</span>'
    )
    return f'<figure><figcaption>{esc(title)}</figcaption>{"".join(parts)}<div class="small">{legend}</div></figure>'


# ---------------------------------------------------------------------------------------------------------
# sections


def _table(head: list[str], rows: list[list], cls: str = "") -> str:
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>")
    return "".join(out) + "</table>"


def _secs(v) -> str:
    from videopoet.jobs.demo import fmt_seconds

    return "-" if v is None else fmt_seconds(v)


def steps_section(state: dict) -> str:
    rows = []
    total = 0.0
    for name, what in STEP_ROWS:
        rec = state["steps"].get(name)
        if rec is None:
            status, secs = "not run", None
        elif rec.get("status") == "off":
            status, secs = f"off: {esc(rec.get('reason') or '')}", None
        elif rec.get("status") == "interrupted":
            status, secs = "interrupted (re-run to resume)", rec.get("partial_s")
        else:
            status = "ran in this run" if rec.get("this_run") == "ran" else "done earlier"
            secs = rec.get("seconds")
            total += secs or 0.0
        rows.append([esc(name), esc(what), status, _secs(secs)])
    rows.append(["<b>all steps</b>", "", "", f"<b>{_secs(total)}</b>"])
    return "<h2>Steps</h2>" + _table(["step", "what", "status", "time"], rows, cls="steps")


def curation_section(stats: dict | None, folder: str) -> str:
    if not stats:
        return "<h2>Curation</h2><p class='empty'>no curation output yet</p>"
    head = (
        f"<h2>Curation</h2><p><code>{esc(folder)}</code>: {stats['inputs']} inputs, "
        f"<b>{stats['inputs_kept']}</b> kept, {stats['inputs_rejected']} rejected, "
        f"{stats['inputs_unaccounted']} unaccounted; <b>{stats['clips_kept']}</b> clips kept ("
        + ", ".join(f"{m} {n}" for m, n in stats["clips_by_modality"].items())
        + ")"
        + (f", in {_secs(stats.get('seconds'))}" if stats.get("seconds") is not None else "")
        + ".</p>"
    )
    reasons = sorted(stats["rejections_by_stage_reason"].items(), key=lambda kv: -kv[1])
    charts = [
        svg_bars("Clips kept by modality", list(stats["clips_by_modality"].items())),
        svg_bars("Rejections by stage:reason", reasons),
    ]
    return head + '<div class="charts">' + "".join(charts) + "</div>"


def shards_section(
    stats: dict | None, sr_stats: dict | None, folder: str, summary: dict | None, shard_report: bool
) -> str:
    if not stats:
        return "<h2>Token shards</h2><p class='empty'>no token shards yet</p>"
    out = [
        f"<h2>Token shards</h2><p><code>{esc(folder)}</code>: {stats['samples']:,} samples from "
        f"{stats['clips']} clips in {stats['shards']} shard(s), {stats['bytes'] / 2**20:.2f} MiB. Tokens: "
        + ", ".join(f"{k} {v:,}" for k, v in stats["tokens"].items())
        + ".</p>"
    ]
    charts = [
        svg_bars("Samples by modality", list(stats["samples_by_modality"].items())),
        svg_bars("Tokens by kind", [(k, v) for k, v in stats["tokens"].items() if v]),
    ]
    reasons = stats.get("rejections_by_stage_reason") or {}
    if reasons:
        charts.append(svg_bars("Clips and windows not tokenized", list(reasons.items())))
    out.append('<div class="charts">' + "".join(charts) + "</div>")
    notes = []
    if reasons.get("decode:modality_off"):
        notes.append(
            "modality_off: clips of a modality this run does not tokenize (the LM uses no audio-only rows)"
        )
    if reasons.get("decode:too_short"):
        notes.append("too_short: clips shorter than one window")
    if notes:
        out.append(f'<p class="small">{esc("; ".join(notes))}.</p>')
    if summary and summary.get("visual_codes", {}).get("tokens"):
        vu = summary["visual_codes"]
        out.append(
            f"<p>MAGVIT-v2 codes used: {vu['codes_used']:,} of {vu['codebook_size']:,} (entropy "
            f"{vu['entropy_bits']:.2f} of {vu['max_entropy_bits']:.0f} bits).</p>"
        )
    if sr_stats:
        out.append(
            f"<p>Super-resolution pairs: {sr_stats['samples']:,} windows from {sr_stats['clips']} clips, "
            f"{sr_stats['tokens'].get('sr', 0):,} high-resolution tokens.</p>"
        )
    out.append(
        '<p><a href="shards/index.html">The full shard report</a>: validation, distributions, codebook usage '
        "and decoded previews.</p>"
        if shard_report
        else ""
    )
    return "".join(out)


def training_section(title: str, run_dir: str, rec: dict | None, what: str) -> str:
    metrics = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    info = read_json(os.path.join(run_dir, "config.json")) or {}
    arch = info.get("lm") or info.get("sr") or {}
    desc = ", ".join(
        f"{k} {arch[k]}" for k in ("n_layer", "n_block", "n_head", "d_model", "vocab_size") if k in arch
    )
    lines = [f"<h3>{esc(title)}</h3>"]
    if not metrics:
        lines.append(f"<p class='empty'>no {esc(what)} metrics in <code>{esc(run_dir)}</code></p>")
        return "".join(lines)
    first, last = metrics[0], metrics[-1]
    secs = sum(float(r.get("step_s") or 0.0) for r in metrics)
    lines.append(
        f"<p><code>{esc(run_dir)}</code>: {last['step']} steps"
        + (f" (export at step {info['step']})" if info.get("step") else "")
        + f"; loss {float(first['loss']):.3f} at step {first['step']} &rarr; <b>{float(last['loss']):.3f}</b> at "
        f"step {last['step']}"
        + (f"; {desc}" if desc else "")
        + (f"; step time {secs / max(1, len(metrics)):.1f} s on average" if secs else "")
        + (f"; step total {_secs(rec.get('seconds'))}" if rec and rec.get("seconds") else "")
        + ".</p>"
    )
    lines.append(svg_curve(f"{what} training loss", metrics))
    return "".join(lines)


def _copy(src: str, dst: str) -> str:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not (os.path.isfile(dst) and os.path.getmtime(dst) >= os.path.getmtime(src)):
        shutil.copy2(src, dst)
    return dst


def input_preview(kind: str, path: str, media: str, name: str, tok_cfg) -> str | None:
    """What the model was given, as it saw it (the window, at the window size): a PNG or an MP4 in media/."""
    from videopoet.jobs import generate as G

    sizes = [list(s) for s in tok_cfg.window.sizes]
    try:
        if kind == "image":
            import numpy as np
            from PIL import Image

            rgb = G.read_image(path, None, sizes)
            dst = os.path.join(media, f"{name}_input.png")
            Image.fromarray(np.ascontiguousarray(rgb[0])).save(dst)
            return dst
        if kind == "video":
            frames, fps = tok_cfg.window.frames, tok_cfg.window.fps
            rgb = G.read_video_window(path, frames, fps, None, sizes)
            audio = None
            try:
                wave = G.read_audio(path, frames / fps, 16000)
                if len(wave):
                    audio = (wave, 16000)
            except Exception:  # a video without sound: show it silent
                audio = None
            return G.write_mp4(os.path.join(media, f"{name}_input.mp4"), rgb, fps, audio)
        if kind == "audio":
            return _copy(path, os.path.join(media, f"{name}_input{os.path.splitext(path)[1]}"))
    except Exception as e:  # a preview is a convenience: never fail the report for it
        log.warning("report: no preview of %s input %s: %s", name, path, e)
    return None


def _media_tag(path: str, rel_to: str) -> str:
    rel = esc(os.path.relpath(path, rel_to))
    ext = os.path.splitext(path)[1].lower()
    if ext in (".png", ".jpg", ".jpeg"):
        return f'<img alt="{rel}" src="{rel}">'
    if ext in (".wav", ".ogg", ".flac", ".mp3"):
        return f'<audio controls preload="auto" src="{rel}"></audio>'
    return f'<video controls loop preload="auto" src="{rel}"></video>'


TASK_TITLES = {
    "text_to_video": "Text to video",
    "text_to_image": "Text to image",
    "unconditional": "Unconditional video",
    "image_to_video": "Image to video",
    "frame_prediction": "Frame prediction",
    "inpainting": "Inpainting",
    "outpainting": "Outpainting",
    "audio_to_video": "Audio to video",
    "video_to_audio": "Video to audio",
    "audio_video_continuation": "Audio-video continuation",
}


def generations_section(demo, state: dict, out_dir: str) -> str:
    media = os.path.join(out_dir, "media")
    rec = (state["steps"].get("generate") or {}).get("result") or {}
    try:
        cfgs = demo.generate_configs()
    except Exception as e:  # no curated clips yet, or no inputs that fit
        return f"<h2>Generations</h2><p class='empty'>none: {esc(str(e))}</p>"
    cards = []
    for task, cfg in cfgs.items():
        if not os.path.isfile(cfg.output):
            cards.append(
                f'<div class="gen"><h3>{esc(TASK_TITLES[task])}</h3><p class="empty">not generated yet</p></div>'
            )
            continue
        out = _copy(cfg.output, os.path.join(media, os.path.basename(cfg.output)))
        given = []
        inp = None
        if cfg.prompt and task in ("text_to_video", "text_to_image"):
            given.append(f"prompt: <i>&ldquo;{esc(cfg.prompt)}&rdquo;</i>")
        for kind in ("image", "video", "audio"):
            src = getattr(cfg, kind)
            if src and (kind != "video" or task != "image_to_video" or not cfg.image):
                given.append(f"{kind}: <code>{esc(os.path.basename(src))}</code>")
                inp = input_preview(kind, src, media, task, demo.tok_cfg) or inp
        seconds = (rec.get(task) or {}).get("seconds")
        sr = getattr(cfg, "sr", None)
        notes = [f"generated in {_secs(seconds)}" if seconds else "generated earlier"]
        if sr is not None and getattr(sr, "checkpoints", None):
            notes.append("upsampled by the super-resolution stage")
        pair = ""
        if inp:
            pair += f"<figure><figcaption class='small'>input (as the model saw it)</figcaption>{_media_tag(inp, out_dir)}</figure>"
        pair += f"<figure><figcaption class='small'>output</figcaption>{_media_tag(out, out_dir)}</figure>"
        cards.append(
            f'<div class="gen"><h3>{esc(TASK_TITLES[task])}</h3><p class="small">{"; ".join(given) or "no input"}'
            f" &mdash; {esc('; '.join(notes))}</p><div class='pair'>{pair}</div></div>"
        )
    return "<h2>Generations</h2><div class='gens'>" + "".join(cards) + "</div>"


# ---------------------------------------------------------------------------------------------------------


def write_report(demo, state: dict) -> str:
    """Write OUT/report/index.html (and copy the generations into OUT/report/media/). Returns its path."""
    from videopoet.core.ray_runtime import local_cpu_count

    p = demo.p
    out_dir = p.report
    os.makedirs(out_dir, exist_ok=True)
    tok_stats = read_json(join(p.tokens, "stats.json"))
    summary = read_json(join(p.shard_report, "summary.json"))
    ran = [r.get("seconds") or 0.0 for r in state["steps"].values() if r.get("status") == "done"]
    import torch

    device = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    body = [
        "<h1>VideoPoet demo</h1>",
        f"<p><code>{esc(os.path.abspath(p.out))}</code> &mdash; report written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}; steps took {_secs(sum(ran))} in all on "
        f"{local_cpu_count()} CPU cores ({esc(platform.machine())}, {esc(device)}), torch {esc(torch.__version__)}.</p>",
        '<p class="note">A debug-size LM trained for minutes on about a hundred windows learns the token '
        "statistics of its data, not its content: the generations show that every part of the system works "
        "end to end (curation, tokenizers, shards, DeepSpeed training, KV-cached sampling, decoding to MP4), "
        "not model quality. Train longer (<code>train_lm.extra='[train.max_steps=400]'</code>), on more data (<code>corpus</code>), "
        "or a larger size on GPUs (README: Running on a Ray cluster) for that.</p>",
        steps_section(state),
        curation_section(read_json(join(p.curated, "stats.json")), p.curated),
        shards_section(
            tok_stats,
            read_json(join(p.tokens_sr, "stats.json")),
            p.tokens,
            summary,
            os.path.isfile(join(p.shard_report, "index.html")),
        ),
        "<h2>Training</h2>",
        training_section("LM", p.lm, state["steps"].get("train-lm"), "LM"),
    ]
    if os.path.isdir(p.sr) or (state["steps"].get("train-sr") or {}).get("status") == "done":
        body.append(training_section("Super-resolution", p.sr, state["steps"].get("train-sr"), "SR"))
    body.append(generations_section(demo, state, out_dir))
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>VideoPoet demo</title>'
        f"<style>{_CSS}{_EXTRA_CSS}</style></head><body>{''.join(body)}{_SCRIPT}</body></html>\n"
    )
    url = join(out_dir, "index.html")
    atomic_write_text(url, page)
    return url
