"""Offline inspection of a token dataset: summary statistics, decoded previews, a static HTML report.

    stats = summarize("out/tokens")                  # rows / tokens / seconds by modality, resolutions,
    print(format_summary(stats))                     # caption lengths, codebook usage, token histograms
    files = show_sample("out/tokens", sample_id, "out/inspect")          # MP4 (+ audio) / PNG / WAV + contact sheet
    html = write_report("out/tokens", "out/inspect/report")              # index.html, charts as inline SVG

Decoding uses the tokenizer checkpoints recorded in the dataset metadata (or given explicitly); their
model.safetensors must have the sha256 the metadata records, so tokens are never decoded by the wrong
tokenizer. Charts are drawn as inline SVG (no plotting library needed); contact sheets with Pillow.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from videopoet.core.errors import UserError
from videopoet.core.io import atomic_write_bytes, atomic_write_text, join
from videopoet.core.log import get_logger
from videopoet.pipelines.shards import (
    _open_parquet,
    _rows_from_table,
    file_sha256,
    load_manifest,
    validate_dataset,
)

log = get_logger(__name__)

_SUMMARY_COLUMNS = [
    "sample_id",
    "modality",
    "start_s",
    "end_s",
    "width",
    "height",
    "sr_width",
    "sr_height",
    "caption",
    "text_length",
    "video_tokens",
    "audio_tokens",
    "audio_shape",
    "sr_video_tokens",
]


# ---------------------------------------------------------------------------------------------- summary


def _groups(manifest: dict, max_row_groups: int | None) -> list[tuple[str, int]]:
    units = [(s["name"], g) for s in manifest["shards"] for g, n in enumerate(s["row_groups"]) if n]
    if max_row_groups is None or len(units) <= max_row_groups:
        return units
    pick = np.linspace(0, len(units) - 1, max_row_groups).round().astype(int)
    return [units[i] for i in sorted(set(pick.tolist()))]


def _entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def _usage(counts: np.ndarray) -> dict:
    used = int((counts > 0).sum())
    ent = _entropy_bits(counts)
    top = np.argsort(-counts, kind="stable")[:10]
    return {
        "tokens": int(counts.sum()),
        "codebook_size": int(counts.size),
        "codes_used": used,
        "usage": used / max(1, counts.size),
        "entropy_bits": ent,
        "max_entropy_bits": math.log2(max(1, counts.size)),
        "perplexity": 2**ent,
        "top_codes": [[int(c), int(counts[c])] for c in top if counts[c] > 0],
    }


def _hist(values: list[float], bins: int = 20) -> dict:
    if not values:
        return {"edges": [], "counts": []}
    lo, hi = float(min(values)), float(max(values))
    # one value (up to float noise: window durations are end - start, 2.125 +- 1e-16): a bin centred on it
    if hi - lo <= 1e-9 * max(1.0, abs(lo)):
        lo, hi = lo - 0.5, lo + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


def summarize(dataset_url: str, *, max_row_groups: int | None = None) -> dict:
    """Statistics of a dataset (or of `max_row_groups` row groups spread over it). JSON-able, plus the raw
    code counts under `_counts` (numpy arrays, for charts; drop before serializing)."""
    manifest = load_manifest(dataset_url)
    meta = manifest["meta"]
    vocab = meta.get("vocab") or {}
    visual = np.zeros(2 ** int(vocab.get("visual_bits", 10)), dtype=np.int64)
    sr_visual = np.zeros_like(visual)
    levels, codebook = int(vocab.get("audio_levels", 4)), int(vocab.get("audio_codebook_size", 1024))
    audio = np.zeros((levels, codebook), dtype=np.int64)
    rows_by = Counter()
    seconds_by = Counter()
    tokens_by: dict[str, Counter] = {}
    resolutions: dict[str, Counter] = {}
    sr_res = Counter()
    caption_tokens, caption_chars = [], []
    durations = []
    captioned = 0
    n_rows = 0
    groups = _groups(manifest, max_row_groups)
    files = {}
    for name, g in groups:
        pf = files.get(name) or files.setdefault(name, _open_parquet(join(dataset_url, name)))
        table = pf.read_row_group(g, columns=_SUMMARY_COLUMNS)
        n_rows += table.num_rows
        for col, counts in (("video_tokens", visual), ("sr_video_tokens", sr_visual)):
            flat = pc.list_flatten(table[col]).to_numpy(zero_copy_only=False)
            if flat.size:
                counts += np.bincount(np.clip(flat, 0, counts.size - 1), minlength=counts.size)
        for row in _rows_from_table(table.drop_columns(["video_tokens", "sr_video_tokens"]), reshape=True):
            m = row["modality"]
            rows_by[m] += 1
            t = tokens_by.setdefault(m, Counter())
            a = row.get("audio_tokens")
            if a is not None:
                t["audio"] += a.size
                if a.ndim == 2 and a.shape[0] == levels:
                    for lv in range(levels):
                        audio[lv] += np.bincount(np.clip(a[lv], 0, codebook - 1), minlength=codebook)
            if row.get("start_s") is not None and row.get("end_s") is not None:
                d = float(row["end_s"]) - float(row["start_s"])
                seconds_by[m] += d
                durations.append(d)
            if row.get("width"):
                resolutions.setdefault(m, Counter())[f"{row['width']}x{row['height']}"] += 1
            if row.get("sr_width"):
                sr_res[f"{row['sr_width']}x{row['sr_height']}"] += 1
            if row.get("caption"):
                captioned += 1
                caption_chars.append(len(row["caption"]))
            if row.get("text_length") is not None:
                caption_tokens.append(int(row["text_length"]))
        # video / sr token counts per modality from the list lengths (no Python loop over tokens)
        lens = {
            c: pc.list_value_length(table[c]).to_numpy(zero_copy_only=False)
            for c in ("video_tokens", "sr_video_tokens")
        }
        mods = table["modality"].to_pylist()
        for i, m in enumerate(mods):
            t = tokens_by.setdefault(m, Counter())
            for c, key in (("video_tokens", "video"), ("sr_video_tokens", "sr")):
                v = lens[c][i]
                if v == v and v:  # NaN for null lists
                    t[key] += int(v)
    stats = {
        "dataset": dataset_url,
        "shards": len(manifest["shards"]),
        "row_groups_read": len(groups),
        "row_groups_total": sum(len(s["row_groups"]) for s in manifest["shards"]),
        "rows_read": n_rows,
        "rows_total": manifest["totals"]["rows"],
        "bytes": manifest["totals"]["bytes"],
        "rows_by_modality": dict(sorted(rows_by.items())),
        "tokens_by_modality": {m: dict(sorted(c.items())) for m, c in sorted(tokens_by.items())},
        "seconds_by_modality": {m: round(v, 3) for m, v in sorted(seconds_by.items())},
        "duration_hist": _hist(durations),
        "resolutions": {m: dict(c.most_common()) for m, c in sorted(resolutions.items())},
        "sr_resolutions": dict(sr_res.most_common()),
        "captioned_rows": captioned,
        "caption_chars_hist": _hist(caption_chars),
        "caption_tokens_hist": _hist(caption_tokens),
        "visual_codes": _usage(visual),
        "sr_visual_codes": _usage(sr_visual),
        "audio_codes": [_usage(audio[lv]) for lv in range(levels)] if audio.sum() else [],
        "meta": meta,
        "_counts": {"visual": visual, "sr_visual": sr_visual, "audio": audio},
    }
    return stats


def json_summary(stats: dict) -> str:
    return json.dumps({k: v for k, v in stats.items() if not k.startswith("_")}, indent=1, sort_keys=True)


def format_summary(stats: dict) -> str:
    lines = [
        f"dataset {stats['dataset']}: {stats['rows_total']} rows in {stats['shards']} shards, "
        f"{stats['bytes'] / 2**20:.2f} MiB"
        + (
            f" (statistics over {stats['row_groups_read']} of {stats['row_groups_total']} row groups)"
            if stats["row_groups_read"] < stats["row_groups_total"]
            else ""
        ),
        f"{'modality':<8} {'rows':>8} {'video tok':>11} {'audio tok':>11} {'sr tok':>11} {'seconds':>10}",
    ]
    for m, n in stats["rows_by_modality"].items():
        t = stats["tokens_by_modality"].get(m, {})
        lines.append(
            f"{m:<8} {n:>8} {t.get('video', 0):>11} {t.get('audio', 0):>11} {t.get('sr', 0):>11} "
            f"{stats['seconds_by_modality'].get(m, 0.0):>10.1f}"
        )
    for m, res in stats["resolutions"].items():
        lines.append(f"resolutions ({m}): " + ", ".join(f"{k} x{v}" for k, v in res.items()))
    if stats["sr_resolutions"]:
        lines.append(
            "super-resolution targets: " + ", ".join(f"{k} x{v}" for k, v in stats["sr_resolutions"].items())
        )
    ct = stats["caption_tokens_hist"]
    lines.append(
        f"captions: {stats['captioned_rows']} of {stats['rows_read']} rows"
        + (f", {min(ct['edges']):.0f}..{max(ct['edges']):.0f} text tokens" if ct["edges"] else "")
    )
    for key, label in (("visual_codes", "visual codes"), ("sr_visual_codes", "super-resolution codes")):
        u = stats[key]
        if u["tokens"]:
            lines.append(
                f"{label}: {u['codes_used']} of {u['codebook_size']} used ({100 * u['usage']:.1f}%), entropy "
                f"{u['entropy_bits']:.2f} of {u['max_entropy_bits']:.0f} bits, perplexity {u['perplexity']:.0f}"
            )
    for lv, u in enumerate(stats["audio_codes"]):
        lines.append(
            f"audio level {lv}: {u['codes_used']} of {u['codebook_size']} codes used, entropy {u['entropy_bits']:.2f} "
            f"of {u['max_entropy_bits']:.0f} bits"
        )
    meta = stats["meta"]
    for key in ("video_tokenizer", "audio_tokenizer"):
        if meta.get(key):
            lines.append(f"{key}: {meta[key]['id']} ({meta[key]['checkpoint']})")
    if meta.get("text_encoder"):
        lines.append(f"text_encoder: {meta['text_encoder']['id']} ({meta['text_encoder']['dim']}-d)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- decoding


@dataclass
class Decoders:
    video: object | None
    audio: object | None


def _checked_checkpoint(meta_tok: dict | None, override: str | None, what: str) -> str | None:
    if not meta_tok:
        return None
    url = override or meta_tok.get("checkpoint")
    sha = file_sha256(join(url, "model.safetensors")) if url else None
    if sha is None:
        raise UserError(f"no {what} checkpoint recorded in the metadata; pass one ({what}_checkpoint=...)")
    if sha != meta_tok.get("sha256"):
        raise UserError(
            f"the {what} checkpoint at {url} has sha256 {sha[:16]}..., but these tokens were made by "
            f"{meta_tok['id']}; pass the checkpoint that made them ({what}_checkpoint=...)"
        )
    return url


def load_decoders(
    meta: dict,
    *,
    video_checkpoint: str | None = None,
    audio_checkpoint: str | None = None,
    device: str = "cpu",
) -> Decoders:
    """The tokenizers that made a dataset (checksums verified against its metadata)."""
    from videopoet.core.io import exists

    video = audio = None
    vt = meta.get("video_tokenizer")
    if vt:
        url = video_checkpoint or vt.get("checkpoint")
        if not url or not exists(join(url, "model.safetensors")):
            raise UserError(
                f"the MAGVIT-v2 checkpoint {url} recorded in the dataset metadata is not there; pass its current "
                "location with video_checkpoint=..."
            )
        url = _checked_checkpoint(vt, url, "video")
        from videopoet.tokenizers.magvit2 import MagvitV2

        video = MagvitV2.from_pretrained(url, device=device)
    at = meta.get("audio_tokenizer")
    if at:
        url = audio_checkpoint or at.get("checkpoint")
        if url and exists(join(url, "model.safetensors")):
            url = _checked_checkpoint(at, url, "audio")
            from videopoet.tokenizers.soundstream import SoundStream

            audio = SoundStream.from_pretrained(url, device=device).fold_weight_norm_()
        elif audio_checkpoint:
            raise UserError(f"no SoundStream checkpoint at {audio_checkpoint}")
        else:
            log.warning("the SoundStream checkpoint %s is not there: previews will be silent", url)
    return Decoders(video, audio)


def decode_row(row: dict, dec: Decoders) -> dict:
    """Pixels (T, H, W, 3) uint8 for `video_tokens` / `sr_video_tokens`, samples for `audio_tokens`."""
    import torch

    out = {}
    with torch.inference_mode():
        for key in ("video_tokens", "sr_video_tokens"):
            codes = row.get(key)
            if codes is not None and dec.video is not None:
                x = dec.video.decode(torch.from_numpy(np.asarray(codes, dtype=np.int64))[None])[
                    0
                ]  # (3, T, H, W)
                out[key] = (
                    ((x.permute(1, 2, 3, 0).cpu().numpy() + 1.0) * 127.5)
                    .round()
                    .clip(0, 255)
                    .astype(np.uint8)
                )
        codes = row.get("audio_tokens")
        if codes is not None and dec.audio is not None:
            wave = dec.audio.decode(torch.from_numpy(np.asarray(codes, dtype=np.int64))[None])[0]
            out["audio_tokens"] = wave.float().cpu().numpy().clip(-1, 1)
    return out


def find_sample(dataset_url: str, sample_id: str) -> dict:
    """The row whose sample_id is `sample_id` or starts with it (must be unique)."""
    manifest = load_manifest(dataset_url)
    hits = []
    for s in manifest["shards"]:
        pf = _open_parquet(join(dataset_url, s["name"]))
        for g in range(pf.num_row_groups):
            ids = pf.read_row_group(g, columns=["sample_id"])["sample_id"].to_pylist()
            for i, sid in enumerate(ids):
                if sid == sample_id or sid.startswith(sample_id):
                    hits.append((s["name"], g, i, sid))
                    if sid == sample_id:
                        return _read_row(dataset_url, s["name"], g, i)
    if not hits:
        raise UserError(
            f"no sample {sample_id!r} in {dataset_url}; list ids with DuckDB: "
            f"SELECT sample_id FROM '{dataset_url}/shards/*.parquet'"
        )
    if len(hits) > 1:
        raise UserError(
            f"{sample_id!r} matches {len(hits)} samples (e.g. {hits[0][3]}, {hits[1][3]}); give more of the id"
        )
    return _read_row(dataset_url, *hits[0][:3])


def _read_row(dataset_url: str, shard: str, group: int, index: int) -> dict:
    table = _open_parquet(join(dataset_url, shard)).read_row_group(group)
    return _rows_from_table(table.slice(index, 1))[0]


def _title_font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(row: dict, decoded: dict, *, max_frames: int = 9, height: int = 128) -> bytes:
    """PNG: the decoded frames side by side (and the super-resolution frames below), the audio waveform,
    and a caption line with the sample's id, shapes and caption."""
    from PIL import Image, ImageDraw

    strips = []
    for key in ("video_tokens", "sr_video_tokens"):
        frames = decoded.get(key)
        if frames is None:
            continue
        idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
        tiles = []
        for i in idx:
            img = Image.fromarray(frames[i])
            w = max(1, round(img.width * height / img.height))
            tiles.append(img.resize((w, height), Image.Resampling.LANCZOS))
        strip = Image.new(
            "RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), height), (255, 255, 255)
        )
        x = 0
        for t in tiles:
            strip.paste(t, (x, 0))
            x += t.width + 4
        strips.append(strip)
    wave = decoded.get("audio_tokens")
    if wave is not None:
        w = max([s.width for s in strips] + [512])
        img = Image.new("RGB", (w, 64), (245, 245, 250))
        d = ImageDraw.Draw(img)
        cols = np.array_split(wave, w)
        for x, c in enumerate(cols):
            if c.size:
                lo, hi = float(c.min()), float(c.max())
                d.line([(x, 32 - hi * 30), (x, 32 - lo * 30)], fill=(40, 90, 200))
        strips.append(img)
    font = _title_font(12)
    lines = [
        f"{row['sample_id']}  {row['modality']}  "
        + "  ".join(
            f"{k}={tuple(row[k].shape)}"
            for k in ("video_tokens", "audio_tokens", "sr_video_tokens")
            if row.get(k) is not None
        ),
        (row.get("caption") or "(no caption)")[:160],
    ]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max([s.width for s in strips] + [512] + [int(measure.textlength(t, font=font)) for t in lines])
    top = 8 + 16 * len(lines)
    sheet = Image.new("RGB", (width + 16, top + sum(s.height + 8 for s in strips) + 8), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        d.text((8, 6 + 16 * i), line, fill=(20, 20, 20), font=font)
    y = top
    for s in strips:
        sheet.paste(s, (8, y))
        y += s.height + 8
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def _encode_mp4(frames: np.ndarray, fps: float, wave: np.ndarray | None, rate: int) -> bytes:
    """H.264 yuv420p MP4 of (T, H, W, 3) frames, with the mono wave as AAC when given."""
    import av

    fd, path = tempfile.mkstemp(suffix=".mp4", prefix="videopoet-show-")
    os.close(fd)
    try:
        with av.open(path, "w") as out:
            vs = out.add_stream("libx264", rate=max(1, round(fps)))
            vs.height, vs.width = frames.shape[1], frames.shape[2]
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": "18", "preset": "veryfast"}
            astream = None
            if wave is not None:
                astream = out.add_stream("aac", rate=rate)
                astream.layout = "mono"
            for f in frames:
                for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    out.mux(p)
            for p in vs.encode():
                out.mux(p)
            if astream is not None:
                for i in range(0, len(wave), 1024):
                    af = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(wave[None, i : i + 1024].astype(np.float32)),
                        format="flt",
                        layout="mono",
                    )
                    af.sample_rate, af.pts = rate, i
                    for p in astream.encode(af):
                        out.mux(p)
                for p in astream.encode():
                    out.mux(p)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _png(frame: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def render_sample(row: dict, dec: Decoders, out_dir: str, meta: dict) -> dict[str, str]:
    """Decode one sample into `out_dir`: video.mp4 (with its audio) or image.png, audio.wav, sr.mp4 / sr.png
    (the super-resolution target), contact_sheet.png. Returns {"video"|"image"|"audio"|"sr"|"contact_sheet": url}."""
    from videopoet.pipelines.media import wav_bytes

    decoded = decode_row(row, dec)
    files = {}
    rate = int((meta.get("audio_tokenizer") or {}).get("sample_rate") or 16000)
    fps = float(row.get("fps") or (meta.get("window") or {}).get("fps") or 8.0)
    wave = decoded.get("audio_tokens")
    for key, stem in (("video_tokens", "video"), ("sr_video_tokens", "sr")):
        frames = decoded.get(key)
        if frames is None:
            continue
        if len(frames) == 1:
            stem = "image" if stem == "video" else stem
            url = join(out_dir, f"{stem}.png")
            atomic_write_bytes(url, _png(frames[0]))
        else:
            url = join(out_dir, f"{stem}.mp4")
            atomic_write_bytes(url, _encode_mp4(frames, fps, wave if stem == "video" else None, rate))
        files[stem] = url
    if wave is not None:
        files["audio"] = join(out_dir, "audio.wav")
        atomic_write_bytes(files["audio"], wav_bytes(wave, rate))
    files["contact_sheet"] = join(out_dir, "contact_sheet.png")
    atomic_write_bytes(files["contact_sheet"], contact_sheet(row, decoded))
    return files


def show_sample(
    dataset_url: str,
    sample_id: str,
    out_dir: str,
    *,
    video_checkpoint: str | None = None,
    audio_checkpoint: str | None = None,
    device: str = "cpu",
) -> dict[str, str]:
    manifest = load_manifest(dataset_url)
    row = find_sample(dataset_url, sample_id)
    dec = load_decoders(
        manifest["meta"], video_checkpoint=video_checkpoint, audio_checkpoint=audio_checkpoint, device=device
    )
    return render_sample(row, dec, join(out_dir, row["sample_id"]), manifest["meta"])


# ------------------------------------------------------------------------------------------------- report

_PALETTE = ["#3b6fd4", "#e07b39", "#3aa675", "#c44e6a", "#8a63c9", "#a88a2c"]


def svg_bars(title: str, items: list[tuple[str, float]], *, width: int = 460, bar_h: int = 18) -> str:
    """Horizontal bar chart as inline SVG."""
    if not items:
        return f'<figure><figcaption>{html.escape(title)}</figcaption><p class="empty">no data</p></figure>'
    label_w, pad = 120, 6
    top = max(v for _, v in items) or 1
    h = pad + len(items) * (bar_h + pad)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img">']
    for i, (label, v) in enumerate(items):
        y = pad + i * (bar_h + pad)
        w = max(1.0, (width - label_w - 70) * v / top)
        color = _PALETTE[i % len(_PALETTE)]
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h - 5}" text-anchor="end" font-size="12">{html.escape(str(label))}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{y + bar_h - 5}" font-size="12">{_fmt(v)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def svg_columns(
    title: str,
    values: list[float],
    *,
    labels: tuple[str, str] = ("", ""),
    width: int = 460,
    height: int = 140,
    log: bool = False,
) -> str:
    """Vertical column chart (a histogram) as inline SVG; `labels` name the left and right ends of the x axis."""
    if not values or not any(values):
        return f'<figure><figcaption>{html.escape(title)}</figcaption><p class="empty">no data</p></figure>'
    vals = [math.log10(1 + v) if log else float(v) for v in values]
    top = max(vals) or 1
    n = len(vals)
    bw = (width - 20) / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}" role="img">']
    for i, v in enumerate(vals):
        h = (height - 10) * v / top
        parts.append(
            f'<rect x="{10 + i * bw:.2f}" y="{height - h:.2f}" width="{max(bw - 1, 0.6):.2f}" height="{h:.2f}" fill="#3b6fd4"/>'
        )
    parts.append(f'<line x1="10" y1="{height}" x2="{width - 10}" y2="{height}" stroke="#555"/>')
    parts.append(f'<text x="10" y="{height + 15}" font-size="11">{html.escape(labels[0])}</text>')
    parts.append(
        f'<text x="{width - 10}" y="{height + 15}" font-size="11" text-anchor="end">{html.escape(labels[1])}</text>'
    )
    parts.append("</svg>")
    note = " (log scale)" if log else ""
    return f"<figure><figcaption>{html.escape(title)}{note}</figcaption>{''.join(parts)}</figure>"


def _fmt(v: float) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:.1f}"
    return f"{int(v):,}"


def _binned(counts: np.ndarray, bins: int = 64) -> list[float]:
    return [float(c.sum()) for c in np.array_split(counts, min(bins, max(1, counts.size)))]


def _hist_chart(title: str, h: dict, unit: str) -> str:
    if not h["counts"]:
        return svg_columns(title, [])
    return svg_columns(title, h["counts"], labels=(f"{h['edges'][0]:g} {unit}", f"{h['edges'][-1]:g} {unit}"))


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;background:#fff} td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f0f3f8} td:first-child,th:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:18px} figure{margin:0;background:#fff;border:1px solid #e3e3e3;padding:8px}
figcaption{font-size:13px;font-weight:600;margin-bottom:4px} .empty{color:#888;font-size:12px}
.previews{display:flex;flex-direction:column;gap:16px} .preview{background:#fff;border:1px solid #e3e3e3;padding:8px}
.preview img{max-width:100%;display:block} code{font-size:12px;background:#eef;padding:1px 3px}
.ok{color:#1c7c3c;font-weight:600} .bad{color:#b3261e;font-weight:600} .meta td{text-align:left}
"""


def write_report(
    dataset_url: str,
    out_dir: str,
    *,
    previews: int = 6,
    max_row_groups: int | None = None,
    video_checkpoint: str | None = None,
    audio_checkpoint: str | None = None,
    device: str = "cpu",
    check_rows: bool = True,
) -> str:
    """Write `<out_dir>/index.html` (self-contained except for preview files under `<out_dir>/previews/`)."""
    stats = summarize(dataset_url, max_row_groups=max_row_groups)
    issues = validate_dataset(dataset_url, check_rows=check_rows, max_issues=20)
    meta = stats["meta"]
    esc = html.escape
    body = [
        f"<h1>Token dataset report</h1><p><code>{esc(dataset_url)}</code>: {stats['rows_total']:,} samples in "
        f"{stats['shards']} shards, {stats['bytes'] / 2**20:.2f} MiB</p>"
    ]
    if issues:
        body.append(f'<p class="bad">validate: {len(issues)} problem(s)</p><ul>')
        body += [f"<li>{esc(str(i))}</li>" for i in issues]
        body.append("</ul>")
    else:
        body.append(
            '<p class="ok">validate: no problems found (checksums, schema, metadata, token ranges)</p>'
        )
    # -- tables
    body.append(
        "<h2>Samples and tokens by modality</h2><table><tr><th>modality</th><th>rows</th><th>video tokens</th>"
        "<th>audio tokens</th><th>super-res tokens</th><th>seconds</th></tr>"
    )
    for m, n in stats["rows_by_modality"].items():
        t = stats["tokens_by_modality"].get(m, {})
        body.append(
            f"<tr><td>{esc(m)}</td><td>{n:,}</td><td>{t.get('video', 0):,}</td><td>{t.get('audio', 0):,}</td>"
            f"<td>{t.get('sr', 0):,}</td><td>{stats['seconds_by_modality'].get(m, 0.0):,.1f}</td></tr>"
        )
    body.append("</table>")
    # -- charts
    charts = [
        svg_bars("Rows by modality", list(stats["rows_by_modality"].items())),
        svg_bars(
            "Resolutions (tokenized W x H)",
            [(f"{m} {k}", v) for m, res in stats["resolutions"].items() for k, v in res.items()]
            + [(f"SR {k}", v) for k, v in stats["sr_resolutions"].items()],
        ),
        _hist_chart("Window durations", stats["duration_hist"], "s"),
        _hist_chart("Caption lengths (text-encoder tokens)", stats["caption_tokens_hist"], "tok"),
        _hist_chart("Caption lengths (characters)", stats["caption_chars_hist"], "chars"),
    ]
    counts = stats["_counts"]
    vu = stats["visual_codes"]
    if vu["tokens"]:
        charts.append(
            svg_columns(
                f"Visual token histogram ({vu['codes_used']:,} of {vu['codebook_size']:,} codes used, entropy "
                f"{vu['entropy_bits']:.2f}/{vu['max_entropy_bits']:.0f} bits)",
                _binned(counts["visual"]),
                labels=("code 0", f"code {vu['codebook_size'] - 1}"),
            )
        )
        ranked = np.sort(counts["visual"])[::-1]
        charts.append(
            svg_columns(
                "Visual code frequency by rank",
                _binned(ranked[: max(1, vu["codes_used"])]),
                labels=("most used", "least used"),
                log=True,
            )
        )
    for lv, u in enumerate(stats["audio_codes"]):
        charts.append(
            svg_columns(
                f"Audio level {lv} token histogram ({u['codes_used']} of {u['codebook_size']} codes used)",
                _binned(counts["audio"][lv]),
                labels=("code 0", f"code {u['codebook_size'] - 1}"),
            )
        )
    body.append('<h2>Distributions</h2><div class="charts">' + "".join(charts) + "</div>")
    # -- metadata
    rows = []
    for key in ("video_tokenizer", "audio_tokenizer"):
        tok = meta.get(key)
        if tok:
            rows.append(
                (key, f"{tok['id']} &mdash; {esc(str(tok['checkpoint']))} (vocabulary {tok['vocab_size']:,})")
            )
    if meta.get("text_encoder"):
        rows.append(("text_encoder", f"{esc(meta['text_encoder']['id'])} ({meta['text_encoder']['dim']}-d)"))
    rows.append(("vocab", esc(json.dumps(meta.get("vocab")))))
    rows.append(("window", esc(json.dumps(meta.get("window")))))
    body.append(
        '<h2>Metadata</h2><table class="meta">'
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        + "</table>"
    )
    # -- previews
    body.append("<h2>Decoded previews</h2>")
    if previews > 0:
        try:
            dec = load_decoders(
                meta, video_checkpoint=video_checkpoint, audio_checkpoint=audio_checkpoint, device=device
            )
        except UserError as e:
            dec = None
            body.append(f'<p class="bad">no previews: {esc(str(e))}</p>')
        if dec is not None:
            body.append('<div class="previews">')
            for row in _preview_rows(dataset_url, previews):
                files = render_sample(row, dec, join(out_dir, "previews", row["sample_id"]), meta)
                rel = lambda u: os.path.relpath(u, out_dir) if "://" not in u else u  # noqa: E731
                media = ""
                for kind in ("video", "sr"):
                    if kind in files and files[kind].endswith(".mp4"):
                        media += f'<video controls preload="none" src="{esc(rel(files[kind]))}"></video> '
                if "audio" in files and "video" not in files:
                    media += f'<audio controls preload="none" src="{esc(rel(files["audio"]))}"></audio>'
                sheet = base64.b64encode(_read_bytes(files["contact_sheet"])).decode()
                body.append(
                    f'<div class="preview"><img alt="{esc(row["sample_id"])}" src="data:image/png;base64,{sheet}">'
                    f"<div>{media}</div></div>"
                )
            body.append("</div>")
    else:
        body.append("<p>previews off (previews=0)</p>")
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Token dataset report</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
    url = join(out_dir, "index.html")
    atomic_write_text(url, page)
    atomic_write_text(join(out_dir, "summary.json"), json_summary(stats))
    return url


def _read_bytes(url: str) -> bytes:
    import fsspec

    with fsspec.open(url, "rb") as f:
        return f.read()


def _preview_rows(dataset_url: str, n: int) -> list[dict]:
    """Up to n rows, one modality after another (video, image, audio) so each kind gets shown."""
    manifest = load_manifest(dataset_url)
    picked: dict[str, list[dict]] = {}
    for s in manifest["shards"]:
        pf = _open_parquet(join(dataset_url, s["name"]))
        for g in range(pf.num_row_groups):
            for row in _rows_from_table(pf.read_row_group(g)):
                picked.setdefault(row["modality"], []).append(row)
            if sum(len(v) for v in picked.values()) >= 4 * n:
                break
    out = []
    order = [m for m in ("video", "image", "audio") if m in picked]
    while len(out) < n and any(picked[m] for m in order):
        for m in order:
            if picked[m] and len(out) < n:
                out.append(picked[m].pop(0))
    return out
