"""Task sequences of the VideoPoet LM: one builder per pretraining task, all sharing one token layout.

    b = SequenceBuilder(Vocab.from_tokenizers(magvit_cfg, soundstream_cfg))
    seq = b.text_to_video(video_codes)             # (T', H', W') MAGVIT-v2 indices -> a training sequence
    seq.tokens, seq.text_positions, seq.prefix_len, seq.loss_mask
    prompt = b.text_to_video((5, 16, 16))          # a shape instead of codes: a prompt to generate from
    batch = collate([seq, ...])                    # right-padded (B, T) tensors for `model.lm.VideoPoetLM`

Every sequence is `<bos> <task> <task:NAME>`, then the conditioning blocks, then `<bov_o>`/`<boa_o>` and the
outputs. The prefix (bidirectional attention) is everything up to and including the first output-begin
token; the outputs after it are attended causally and are the only loss targets (`loss_mask`). Text
enters as embeddings: `<bot_i>` is followed by `text_len` (<= 64) `<text>` slots that the model overwrites
with projected text-encoder embeddings (`text_positions`); a slot left unfilled keeps the `<text>`
embedding, which is how a dropped caption (classifier-free guidance) or a short caption looks.

Layout per task, with the paper's shapes (17 frames of 128 x 128 -> 5 x 16 x 16 latent tokens, 2.125 s of
audio -> 4 levels x 106 frames, 64 text slots, no `<source>`); `v` = visual id, `<mask>` = a masked latent
position, `a<l>` = audio id of RVQ level l. Regenerate with `python -m videopoet.model.sequences`
(docs/TOKEN_LAYOUT.md holds the same table and a test keeps them equal):

| task | prefix (bidirectional; no loss) | output (causal; loss) | tokens |
|---|---|---|---|
| unconditional | `<bos> <task> <task:unconditional> <res> <n:5> <n:16> <n:16> <bov_o>` | `v×1280 <eov_o> <eos>` | 1290 |
| text_to_video | `<bos> <task> <task:text_to_video> <bot_i> <text>×64 <eot_i> <res> <n:5> <n:16> <n:16> <bov_o>` | `v×1280 <eov_o> <eos>` | 1356 |
| text_to_image | `<bos> <task> <task:text_to_image> <bot_i> <text>×64 <eot_i> <res> <n:1> <n:16> <n:16> <bov_o>` | `v×256` | 330 |
| frame_prediction | `<bos> <task> <task:frame_prediction> <bov_i> v×512 <eov_i> <res> <n:3> <n:16> <n:16> <bov_o>` | `v×768 <eov_o> <eos>` | 1292 |
| image_to_video | `<bos> <task> <task:image_to_video> <bov_i> v×256 <eov_i> <res> <n:4> <n:16> <n:16> <bov_o>` | `v×1024 <eov_o> <eos>` | 1292 |
| inpainting | `<bos> <task> <task:inpainting> <bov_i> v/<mask>×1280 <eov_i> <res> <n:5> <n:16> <n:16> <bov_o>` | `v×1280 <eov_o> <eos>` | 2572 |
| outpainting | `<bos> <task> <task:outpainting> <bov_i> v/<mask>×1280 <eov_i> <res> <n:5> <n:16> <n:16> <bov_o>` | `v×1280 <eov_o> <eos>` | 2572 |
| stylization | `<bos> <task> <task:stylization> <bot_i> <text>×64 <eot_i> <bov_i> v×1280 <eov_i> <res> <n:5> <n:16> <n:16> <bov_o>` | `v×1280 <eov_o> <eos>` | 2638 |
| audio_to_video | `<bos> <task> <task:audio_to_video> <boa_i> a0×106 a1×106 a2×106 a3×106 <eoa_i> <res> <n:5> <n:16> <n:16> <bov_o>` | `v×1280 <eov_o> <eos>` | 1716 |
| video_to_audio | `<bos> <task> <task:video_to_audio> <bov_i> v×1280 <eov_i> <boa_o>` | `a0×106 a1×106 a2×106 a3×106 <eoa_o> <eos>` | 1712 |
| audio_video_continuation | `<bos> <task> <task:audio_video_continuation> <bov_i> v×512 <eov_i> <boa_i> a0×31 a1×31 a2×31 a3×31 <eoa_i> <res> <n:3> <n:16> <n:16> <bov_o>` | `v×768 <eov_o> <boa_o> a0×75 a1×75 a2×75 a3×75 <eoa_o> <eos>` | 1720 |

Design decisions (where the paper leaves details open):
- Text-to-image stops after the image tokens: no `<eov_o>`, no `<eos>`, so a generation can run on into
  the following latent frames (an image is MAGVIT-v2's first latent frame of a video).
- Frame prediction, image-to-video and audio-video continuation output only the frames after the
  conditioning ones (`<res>` gives the output grid); MAGVIT-v2 is causal, so the decoder gets
  `cat(context, generated)` along time. Image-to-video is frame prediction with one context frame and
  its own task token. The context length k is chosen per example by the caller (variable-length prefix).
- Inpainting / outpainting condition on the target video with masked latent positions replaced by the
  dedicated `<mask>` id (not on MAGVIT-v2 tokens of a pixel-blanked video): tokens of a grey or black
  region are ordinary content tokens that real videos also contain, so the model could not tell "unknown"
  from "grey"; and a latent mask has the same sharp border whatever the tokenizer's receptive field.
  Caveat: unmasked tokens next to the border were encoded from the full frames, so they carry a little
  of the hidden region (MAGVIT-v2's receptive field). The output is the whole video (loss on every token).
- Stylization conditions on text plus MAGVIT-v2 tokens of the control video: optical flow (2 channels)
  and depth (1 channel) packed as a 3-channel video, or several control grids, each in its own
  `<bov_i> ... <eov_i>` block.
- `<source> <src:k>` (optional on every task) tags the data source; `<res> <n:T'> <n:H'> <n:W'>` gives
  the output video's latent grid and is omitted when the only output is audio.
- Audio blocks are level-major (all frames of level 0, then level 1, ...), levels in disjoint id ranges.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor

from videopoet.core.errors import UserError
from videopoet.model.vocab import MASK, PAD, SPECIAL, SPECIAL_NAMES, TASK_BASE, TEXT, Vocab

MAX_TEXT_TOKENS = 64
"""Most text-embedding slots a sequence may reserve (VideoPoet truncates T5 captions to 64 tokens)."""


class Task(enum.IntEnum):
    """Pretraining tasks; the value is the task-id token's offset (`<task:NAME>` = 32 + value). Never renumber."""

    UNCONDITIONAL = 0
    TEXT_TO_VIDEO = 1
    TEXT_TO_IMAGE = 2
    FRAME_PREDICTION = 3
    IMAGE_TO_VIDEO = 4
    INPAINTING = 5
    OUTPAINTING = 6
    STYLIZATION = 7
    AUDIO_TO_VIDEO = 8
    VIDEO_TO_AUDIO = 9
    AUDIO_VIDEO_CONTINUATION = 10

    @property
    def token(self) -> int:
        return Vocab.task_token(int(self))


@dataclass(frozen=True)
class Step:
    """One stretch of a sequence's output: `forced` ids appended as they are, or `count` ids sampled in `[lo, hi)`."""

    forced: tuple[int, ...] = ()
    count: int = 0
    lo: int = 0
    hi: int = 0

    def __len__(self) -> int:
        return len(self.forced) if self.forced else self.count


@dataclass
class Sequence:
    """One task sequence. Training sequences hold the outputs; prompts stop at `prefix_len` (`is_prompt`)."""

    task: Task
    tokens: Tensor
    """`(T,)` int64 ids. Text slots hold `<text>`; in a prompt, T == prefix_len."""
    text_positions: Tensor
    """`(S,)` int64 indices of the text slots, in order (S = text_len, possibly 0)."""
    prefix_len: int
    """Number of leading tokens attended bidirectionally: all conditioning, up to and including `<bov_o>`/`<boa_o>`."""
    loss_mask: Tensor
    """`(T,)` bool, True on the tokens the loss predicts: every token after the prefix."""
    plan: tuple[Step, ...] = field(default=())
    """The tokens after the prefix as steps (sampled ranges and forced special tokens), for generation."""

    def __len__(self) -> int:
        return int(self.tokens.numel())

    @property
    def output_len(self) -> int:
        return sum(len(s) for s in self.plan)

    @property
    def is_prompt(self) -> bool:
        return len(self) == self.prefix_len and self.output_len > 0

    def prompt(self) -> Sequence:
        """This sequence cut at the end of its prefix: what generation starts from."""
        return replace(
            self,
            tokens=self.tokens[: self.prefix_len].clone(),
            loss_mask=self.loss_mask[: self.prefix_len].clone(),
        )

    def render(self, vocab: Vocab) -> tuple[str, str]:
        """(prefix, output) as compact symbolic text, e.g. `<bos> ... <bov_o>` and `v×1280 <eov_o> <eos>`."""
        return _render(self.tokens[: self.prefix_len], vocab), _render(self.tokens[self.prefix_len :], vocab)


def _token_class(token: int, vocab: Vocab) -> str | None:
    """Run-length class of an id for `render` (None: print the token itself)."""
    if token == TEXT:
        return "<text>"
    if token == MASK or vocab.visual_offset <= token < vocab.audio_offset:
        return "v"
    if token >= vocab.audio_offset:
        return f"a{(token - vocab.audio_offset) // vocab.audio_codebook_size}"
    return None


def _render(tokens: Tensor, vocab: Vocab) -> str:
    runs: list[list] = []  # [label, count, has_mask, is_run]
    for t in tokens.tolist():
        cls = _token_class(t, vocab)
        if cls is not None and runs and runs[-1][3] and runs[-1][0] == cls:
            runs[-1][1] += 1
            runs[-1][2] |= t == MASK
        elif cls is not None:
            runs.append([cls, 1, t == MASK, True])
        else:
            runs.append([_special_name(t, vocab), 1, False, False])
    out = []
    for label, n, has_mask, is_run in runs:
        if is_run:
            out.append(f"{'v/<mask>' if has_mask else label}×{n}")
        else:
            out.append(label)
    return " ".join(out)


def _special_name(token: int, vocab: Vocab) -> str:
    if TASK_BASE <= token < TASK_BASE + len(Task):
        return f"<task:{Task(token - TASK_BASE).name.lower()}>"
    return vocab.name(token)


class _Output(NamedTuple):
    kind: str  # "visual" | "audio"
    shape: tuple[int, ...]  # (T', H', W') or (levels, frames)
    ids: Tensor  # flat vocabulary ids (<pad> placeholders when not known)
    known: bool  # False: given as a shape, to be generated


class SequenceBuilder:
    """Builds the sequence of every task from tokenizer codes (see the module docstring for the layouts).

    Visual arguments are MAGVIT-v2 index grids `(T', H', W')` (an image: `(H', W')` or `(1, H', W')`), audio
    arguments SoundStream codes `(levels, frames)`; the builder maps them into the vocabulary. An *output*
    argument may instead be a shape (`(T', H', W')`, or a frame count for audio): the result is then a
    prompt (cut at `prefix_len`) whose `plan` says what to generate.
    """

    def __init__(self, vocab: Vocab, text_slots: int = MAX_TEXT_TOKENS):
        if not 1 <= text_slots <= MAX_TEXT_TOKENS:
            raise UserError(f"text_slots must be in 1..{MAX_TEXT_TOKENS}, got {text_slots}")
        self.vocab = vocab
        self.text_slots = text_slots

    # -- the tasks -------------------------------------------------------------------------------------------
    def unconditional(self, video: Tensor | tuple, *, source: int | None = None) -> Sequence:
        return self._build(Task.UNCONDITIONAL, outputs=[self._video_out(video)], source=source)

    def text_to_video(
        self, video: Tensor | tuple, *, text_len: int | None = None, source: int | None = None
    ) -> Sequence:
        return self._build(
            Task.TEXT_TO_VIDEO,
            text_len=self._text_len(text_len, required=True),
            outputs=[self._video_out(video)],
            source=source,
        )

    def text_to_image(
        self, image: Tensor | tuple, *, text_len: int | None = None, source: int | None = None
    ) -> Sequence:
        """An image is one latent frame. No `<eov_o>`/`<eos>`: generation may continue into video frames."""
        out = self._video_out(image, image=True)
        return self._build(
            Task.TEXT_TO_IMAGE,
            text_len=self._text_len(text_len, required=True),
            outputs=[out],
            source=source,
            close=False,
        )

    def frame_prediction(
        self, context: Tensor, future: Tensor | tuple | int, *, text_len: int = 0, source: int | None = None
    ) -> Sequence:
        """Condition on the first k latent frames `context` `(k, H', W')`, predict the next ones.

        `future` is `(n, H', W')` codes, or a frame count / shape for a prompt. k varies per example (the
        caller picks it, e.g. uniformly in 1..T'-1) so the model learns any prefix length.
        """
        ctx = self._grid(context, "context")
        fut = self._future(future, ctx.shape)
        return self._build(
            Task.FRAME_PREDICTION,
            text_len=self._text_len(text_len),
            visual_inputs=[self.vocab.visual_to_ids(ctx).flatten()],
            outputs=[fut],
            source=source,
        )

    def image_to_video(
        self, image: Tensor, future: Tensor | tuple | int, *, text_len: int = 0, source: int | None = None
    ) -> Sequence:
        """Animate an image: condition on its one latent frame, predict the following latent frames."""
        img = self._grid(image, "image", image=True)
        fut = self._future(future, img.shape)
        return self._build(
            Task.IMAGE_TO_VIDEO,
            text_len=self._text_len(text_len),
            visual_inputs=[self.vocab.visual_to_ids(img).flatten()],
            outputs=[fut],
            source=source,
        )

    def inpainting(
        self, video: Tensor, mask: Tensor | None = None, *, text_len: int = 0, source: int | None = None
    ) -> Sequence:
        """Condition on `video` with the latent positions where `mask` is True set to `<mask>`; output all of `video`.

        `mask` is a bool `(T', H', W')` grid (default: `central_mask(video.shape)`). To build a prompt, pass
        the known video (any codes under the mask) and call `.prompt()` on the result.
        """
        grid = self._grid(video, "video")
        mask = central_mask(grid.shape) if mask is None else mask
        return self._painting(Task.INPAINTING, grid, mask, text_len, source)

    def outpainting(
        self, video: Tensor, mask: Tensor | None = None, *, text_len: int = 0, source: int | None = None
    ) -> Sequence:
        """Like `inpainting`, default mask `outpainting_mask(video.shape)` (left and right quarters hidden)."""
        grid = self._grid(video, "video")
        mask = outpainting_mask(grid.shape) if mask is None else mask
        return self._painting(Task.OUTPAINTING, grid, mask, text_len, source)

    def stylization(
        self,
        video: Tensor | tuple,
        control: Tensor | SequenceABC[Tensor],
        *,
        text_len: int | None = None,
        source: int | None = None,
    ) -> Sequence:
        """Predict `video` from text and control grids: MAGVIT-v2 codes of the optical-flow + depth video.

        `control` is one `(T', H', W')` grid (flow x, flow y and depth packed as a 3-channel video) or a list
        of grids (e.g. flow and depth tokenized separately), each placed in its own visual-input block.
        """
        controls = [control] if isinstance(control, Tensor) else list(control)
        if not controls:
            raise UserError(
                "stylization needs at least one control grid (tokenized optical flow + depth video)"
            )
        grids = [self._grid(c, f"control[{i}]") for i, c in enumerate(controls)]
        out = self._video_out(video)
        for i, g in enumerate(grids):
            if tuple(g.shape) != out.shape:
                raise UserError(
                    f"control[{i}] has latent shape {tuple(g.shape)} but the video has {out.shape}; tokenize the "
                    "flow/depth video at the video's frame count and resolution"
                )
        return self._build(
            Task.STYLIZATION,
            text_len=self._text_len(text_len, required=True),
            visual_inputs=[self.vocab.visual_to_ids(g).flatten() for g in grids],
            outputs=[out],
            source=source,
        )

    def audio_to_video(
        self, audio: Tensor, video: Tensor | tuple, *, text_len: int = 0, source: int | None = None
    ) -> Sequence:
        return self._build(
            Task.AUDIO_TO_VIDEO,
            text_len=self._text_len(text_len),
            audio_input=self.vocab.audio_to_ids(self._audio(audio, "audio")),
            outputs=[self._video_out(video)],
            source=source,
        )

    def video_to_audio(
        self, video: Tensor, audio: Tensor | int | tuple, *, text_len: int = 0, source: int | None = None
    ) -> Sequence:
        """`audio` is `(levels, frames)` codes, or a frame count for a prompt (106 for 2.125 s at 50 Hz)."""
        return self._build(
            Task.VIDEO_TO_AUDIO,
            text_len=self._text_len(text_len),
            visual_inputs=[self.vocab.visual_to_ids(self._grid(video, "video")).flatten()],
            outputs=[self._audio_out(audio)],
            source=source,
        )

    def audio_video_continuation(
        self,
        video_context: Tensor,
        audio_context: Tensor,
        video_future: Tensor | tuple | int,
        audio_future: Tensor | int | tuple,
        *,
        text_len: int = 0,
        source: int | None = None,
    ) -> Sequence:
        """Continue a clip's video and audio together from their first k latent frames and matching audio frames.

        Pick the audio split with `audio_frames_for(k)` so both contexts cover the same time span.
        """
        ctx = self._grid(video_context, "video_context")
        return self._build(
            Task.AUDIO_VIDEO_CONTINUATION,
            text_len=self._text_len(text_len),
            visual_inputs=[self.vocab.visual_to_ids(ctx).flatten()],
            audio_input=self.vocab.audio_to_ids(self._audio(audio_context, "audio_context")),
            outputs=[self._future(video_future, ctx.shape), self._audio_out(audio_future)],
            source=source,
        )

    def build(self, task: Task, **kwargs) -> Sequence:
        """Dispatch by task: `build(Task.TEXT_TO_VIDEO, video=codes)` == `text_to_video(video=codes)`."""
        return getattr(self, Task(task).name.lower())(**kwargs)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _painting(
        self, task: Task, grid: Tensor, mask: Tensor, text_len: int, source: int | None
    ) -> Sequence:
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(grid.shape):
            raise UserError(
                f"{task.name.lower()} mask must be a bool tensor of the video's latent shape {tuple(grid.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )
        ids = self.vocab.visual_to_ids(grid)
        cond = torch.where(mask, torch.full_like(ids, MASK), ids).flatten()
        return self._build(
            task,
            text_len=self._text_len(text_len),
            visual_inputs=[cond],
            outputs=[_Output("visual", tuple(grid.shape), ids.flatten(), True)],
            source=source,
        )

    def _text_len(self, text_len: int | None, required: bool = False) -> int:
        n = self.text_slots if text_len is None else int(text_len)
        if not 0 <= n <= MAX_TEXT_TOKENS or (required and n == 0):
            lo = 1 if required else 0
            raise UserError(
                f"text_len must be in {lo}..{MAX_TEXT_TOKENS} (text-embedding slots), got {text_len}"
            )
        return n

    def _grid(self, x: Tensor, name: str, image: bool = False) -> Tensor:
        x = torch.as_tensor(x)
        if image and x.dim() == 2:
            x = x[None]
        if x.dim() != 3 or x.numel() == 0 or (image and x.shape[0] != 1):
            want = "(H', W') or (1, H', W')" if image else "(T', H', W')"
            raise UserError(f"{name} must be a MAGVIT-v2 code grid {want}, got shape {tuple(x.shape)}")
        return x

    def _audio(self, x: Tensor, name: str) -> Tensor:
        x = torch.as_tensor(x)
        if x.dim() != 2 or x.shape[0] != self.vocab.audio_levels or x.shape[1] == 0:
            raise UserError(
                f"{name} must be SoundStream codes ({self.vocab.audio_levels} levels, frames), got shape {tuple(x.shape)}"
            )
        return x

    def _video_out(self, x: Tensor | tuple, image: bool = False) -> _Output:
        if isinstance(x, Tensor):
            g = self._grid(x, "image" if image else "video", image=image)
            return _Output("visual", tuple(g.shape), self.vocab.visual_to_ids(g).flatten(), True)
        shape = tuple(int(s) for s in x)
        if image and len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3 or min(shape) < 1 or (image and shape[0] != 1):
            raise UserError(f"an output shape must be (T', H', W') with T' = 1 for an image, got {x}")
        return _Output("visual", shape, torch.full((math.prod(shape),), PAD), False)

    def _future(self, x: Tensor | tuple | int, context_shape: torch.Size) -> _Output:
        if isinstance(x, int):
            x = (x, *context_shape[1:])
        out = self._video_out(x)
        if tuple(out.shape[1:]) != tuple(context_shape[1:]):
            raise UserError(
                f"future frames {out.shape} and context {tuple(context_shape)} differ in latent H', W'"
            )
        return out

    def _audio_out(self, x: Tensor | int | tuple) -> _Output:
        if isinstance(x, Tensor):
            codes = self._audio(x, "audio")
            return _Output("audio", tuple(codes.shape), self.vocab.audio_to_ids(codes), True)
        frames = int(x) if isinstance(x, int) else int(tuple(x)[-1])
        if frames < 1:
            raise UserError(f"an audio output needs >= 1 frame, got {x}")
        levels = self.vocab.audio_levels
        return _Output("audio", (levels, frames), torch.full((levels * frames,), PAD), False)

    def _build(
        self,
        task: Task,
        *,
        outputs: list[_Output],
        text_len: int = 0,
        visual_inputs: list[Tensor] = (),
        audio_input: Tensor | None = None,
        source: int | None = None,
        close: bool = True,
    ) -> Sequence:
        v = self.vocab
        S = SPECIAL

        def sp(*names: str) -> Tensor:
            return torch.tensor([S[n] for n in names], dtype=torch.long)

        parts: list[Tensor] = [sp("<bos>", "<task>"), torch.tensor([task.token])]
        text_start = -1
        if text_len:
            parts.append(sp("<bot_i>"))
            text_start = sum(p.numel() for p in parts)
            parts += [torch.full((text_len,), TEXT, dtype=torch.long), sp("<eot_i>")]
        for ids in visual_inputs:
            parts += [sp("<bov_i>"), ids.long(), sp("<eov_i>")]
        if audio_input is not None:
            parts += [sp("<boa_i>"), audio_input.long(), sp("<eoa_i>")]
        if source is not None:
            parts += [sp("<source>"), torch.tensor([v.source_token(source)])]
        visual_out = [o for o in outputs if o.kind == "visual"]
        if visual_out:
            t, h, w = visual_out[0].shape
            parts += [sp("<res>"), torch.tensor([v.number_token(t), v.number_token(h), v.number_token(w)])]

        # Outputs: the first begin token closes the prefix; everything after it is a loss target.
        steps: list[Step] = []
        out_parts: list[Tensor] = []
        pending: list[int] = []  # forced special ids not yet emitted as a step

        def force(*names: str) -> None:
            pending.extend(S[n] for n in names)
            out_parts.append(sp(*names))

        def flush() -> None:
            if pending:
                steps.append(Step(forced=tuple(pending)))
                pending.clear()

        known = all(o.known for o in outputs)
        first = True
        for kind, shape, ids, _known in outputs:
            begin = "<bov_o>" if kind == "visual" else "<boa_o>"
            if first:
                parts.append(sp(begin))
                first = False
            else:
                force(begin)
            flush()
            if kind == "visual":
                steps.append(Step(count=ids.numel(), lo=v.visual_range[0], hi=v.visual_range[1]))
                out_parts.append(ids)
                if close:
                    force("<eov_o>")
            else:
                frames = shape[1]
                for level in range(v.audio_levels):
                    lo, hi = v.audio_level_range(level)
                    steps.append(Step(count=frames, lo=lo, hi=hi))
                out_parts.append(ids)
                force("<eoa_o>")
        if close:
            force("<eos>")
        flush()

        prefix = torch.cat(parts)
        tokens = torch.cat([prefix, *out_parts])
        loss_mask = torch.zeros(tokens.numel(), dtype=torch.bool)
        loss_mask[prefix.numel() :] = True
        text_positions = (
            torch.arange(text_start, text_start + text_len) if text_len else torch.zeros(0, dtype=torch.long)
        )
        seq = Sequence(
            task=task,
            tokens=tokens,
            text_positions=text_positions,
            prefix_len=prefix.numel(),
            loss_mask=loss_mask,
            plan=tuple(steps),
        )
        assert seq.prefix_len + seq.output_len == len(seq), (seq.prefix_len, seq.output_len, len(seq))
        return seq if known else seq.prompt()


def central_mask(shape: tuple[int, ...] | torch.Size, fraction: float = 0.5) -> Tensor:
    """Bool `(T', H', W')` mask, True on a centred box of `fraction` of H' and W' in every frame (inpainting)."""
    t, h, w = (int(s) for s in shape)
    if not 0 < fraction < 1:
        raise UserError(f"mask fraction must be in (0, 1), got {fraction}")
    mh, mw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - mh) // 2, (w - mw) // 2
    mask = torch.zeros(t, h, w, dtype=torch.bool)
    mask[:, top : top + mh, left : left + mw] = True
    return mask


def outpainting_mask(shape: tuple[int, ...] | torch.Size, keep: float = 0.5, axis: str = "width") -> Tensor:
    """Bool `(T', H', W')` mask hiding everything outside a centred band of `keep` of the width or height."""
    t, h, w = (int(s) for s in shape)
    if axis not in ("width", "height"):
        raise UserError(f"outpainting axis must be 'width' or 'height', got {axis!r}")
    if not 0 < keep < 1:
        raise UserError(f"outpainting keep fraction must be in (0, 1), got {keep}")
    mask = torch.ones(t, h, w, dtype=torch.bool)
    n = h if axis == "height" else w
    k = max(1, round(n * keep))
    lo = (n - k) // 2
    if axis == "width":
        mask[:, :, lo : lo + k] = False
    else:
        mask[:, lo : lo + k, :] = False
    return mask


def audio_frames_for(
    latent_frames: int, *, fps: float = 8.0, time_factor: int = 4, audio_rate: float = 50.0
) -> int:
    """SoundStream frames spanning the pixel frames of the first `latent_frames` MAGVIT-v2 latent frames.

    Latent frame 0 covers 1 pixel frame, each later one `time_factor` frames: k latent frames span
    `1 + time_factor * (k - 1)` frames = that / fps seconds; e.g. k = 2 at 8 fps -> 0.625 s -> 31 frames.
    """
    assert latent_frames >= 1, latent_frames
    seconds = (1 + time_factor * (latent_frames - 1)) / fps
    return int(math.floor(seconds * audio_rate + 1e-9))


@dataclass
class Batch:
    """Right-padded tensors of several sequences, as `model.lm.VideoPoetLM` takes them."""

    tokens: Tensor
    """`(B, T)` int64, `<pad>` after each sequence's end."""
    loss_mask: Tensor
    """`(B, T)` bool; False on padding."""
    prefix_len: Tensor
    """`(B,)` int64."""
    text_positions: Tensor
    """`(B, S)` int64 positions of the text slots to fill, -1 where a slot gets no embedding."""
    task: Tensor
    """`(B,)` int64 `Task` values, for per-task loss reporting."""


def collate(
    seqs: SequenceABC[Sequence], *, text_lengths: SequenceABC[int] | None = None, pad_to: int | None = None
) -> Batch:
    """Stack sequences (right-padded with `<pad>`, which no real token attends to: it comes after them).

    `text_lengths[i]` is how many text embeddings sequence i gets (its caption's token count, 0 for a dropped
    caption); its first that many slots are filled, the rest keep the `<text>` embedding. Default: all slots.
    The text tensor passed to the model is then `(B, S, text_dim)` with row i's embeddings first.
    """
    if not seqs:
        raise UserError("collate needs at least one sequence")
    T = max(len(s) for s in seqs) if pad_to is None else pad_to
    if any(len(s) > T for s in seqs):
        raise UserError(f"a sequence of {max(len(s) for s in seqs)} tokens does not fit pad_to={pad_to}")
    S = max(s.text_positions.numel() for s in seqs)
    B = len(seqs)
    tokens = torch.full((B, T), PAD, dtype=torch.long)
    loss_mask = torch.zeros(B, T, dtype=torch.bool)
    text_positions = torch.full((B, S), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s.tokens
        loss_mask[i, : len(s)] = s.loss_mask
        n = s.text_positions.numel() if text_lengths is None else int(text_lengths[i])
        if not 0 <= n <= s.text_positions.numel():
            raise UserError(
                f"sequence {i} has {s.text_positions.numel()} text slots but text_lengths[{i}] = {n}"
            )
        text_positions[i, :n] = s.text_positions[:n]
    return Batch(
        tokens=tokens,
        loss_mask=loss_mask,
        prefix_len=torch.tensor([s.prefix_len for s in seqs], dtype=torch.long),
        text_positions=text_positions,
        task=torch.tensor([int(s.task) for s in seqs], dtype=torch.long),
    )


def example_sequences(
    vocab: Vocab, *, grid=(5, 16, 16), audio_frames: int = 106, k: int = 2
) -> dict[Task, Sequence]:
    """One sequence per task at the given sizes (codes all 0), for documentation and tests."""
    b = SequenceBuilder(vocab)
    t, h, w = grid
    video = torch.zeros(grid, dtype=torch.long)
    audio = torch.zeros(vocab.audio_levels, audio_frames, dtype=torch.long)
    ak = audio_frames_for(k)
    return {
        Task.UNCONDITIONAL: b.unconditional(video),
        Task.TEXT_TO_VIDEO: b.text_to_video(video),
        Task.TEXT_TO_IMAGE: b.text_to_image(video[:1]),
        Task.FRAME_PREDICTION: b.frame_prediction(video[:k], video[k:]),
        Task.IMAGE_TO_VIDEO: b.image_to_video(video[:1], video[1:]),
        Task.INPAINTING: b.inpainting(video),
        Task.OUTPAINTING: b.outpainting(video),
        Task.STYLIZATION: b.stylization(video, video),
        Task.AUDIO_TO_VIDEO: b.audio_to_video(audio, video),
        Task.VIDEO_TO_AUDIO: b.video_to_audio(video, audio),
        Task.AUDIO_VIDEO_CONTINUATION: b.audio_video_continuation(
            video[:k], audio[:, :ak], video[k:], audio[:, ak:]
        ),
    }


def layout_table(vocab: Vocab | None = None) -> str:
    """The Markdown layout table of the module docstring and docs/TOKEN_LAYOUT.md, computed from the builders."""
    vocab = vocab or Vocab()
    rows = [
        "| task | prefix (bidirectional; no loss) | output (causal; loss) | tokens |",
        "|---|---|---|---|",
    ]
    for task, seq in example_sequences(vocab).items():
        prefix, output = seq.render(vocab)
        rows.append(f"| {task.name.lower()} | `{prefix}` | `{output}` | {len(seq)} |")
    return "\n".join(rows)


assert len(SPECIAL_NAMES) <= TASK_BASE and len(Task) <= 32

if __name__ == "__main__":  # python -m videopoet.model.sequences  -> the layout table
    print(layout_table())
