"""Training batches: B synthetic videos of one length -> preprocessed pixels, the shared prompt prefix,
one text row per question (the engine's chat-template ids after the video, then the answer ids) and the
answer-token targets; plus the next-token loss on those answer tokens only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vxl.config import IMAGE_TOKEN_INDEX
from vxl.engine.inputs import prompt_ids_from_text
from vxl.engine.preprocess import preprocess_frames
from vxl.demo.tasks import VideoSample
from demo_model.forward import Fused, encode_video, encode_video_layerwise, text_logits, visual_tokens


@dataclass
class TrainBatch:
    pixels: torch.Tensor        # [B, F, 3, S, S] float32, CLIP-preprocessed
    prefix_ids: torch.Tensor    # [P] chat-template text before the video (the same for every request)
    text_ids: torch.Tensor      # [R, n] after-video prompt + answer (+ im_end), right padded
    video_idx: torch.Tensor     # [R] the video each row asks about
    rows: torch.Tensor          # [A] flat positions (r * n + t) whose logits predict an answer token
    targets: torch.Tensor       # [A] the answer token each of those positions predicts
    ratios: list[int]           # one compression ratio per window


def split_prompt(tokenizer, prompt: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the video placeholder, exactly as the engine builds them."""
    ids = prompt_ids_from_text(tokenizer, prompt, True)
    p = ids.index(IMAGE_TOKEN_INDEX)
    return ids[:p], ids[p + 1:]


def answer_ids(tokenizer, answer: str, eos_id: int) -> list[int]:
    return tokenizer.encode(answer, add_special_tokens=False) + [eos_id]


def make_batch(samples: list[VideoSample], tokenizer, processor, eos_id: int, pad_id: int,
               ratios: list[int]) -> TrainBatch:
    lengths = {len(s.frames) for s in samples}
    if len(lengths) != 1:
        raise ValueError(f"videos of one batch must have the same length, got {sorted(lengths)}")
    frames = torch.from_numpy(np.stack([s.frames for s in samples]))                 # (B, F, S, S, 3)
    pixels = preprocess_frames(frames.flatten(0, 1), processor).unflatten(0, frames.shape[:2])
    prefix, seqs, answer_spans, video_idx = None, [], [], []
    for b, sample in enumerate(samples):
        for qa in sample.qas:
            before, after = split_prompt(tokenizer, qa.prompt)
            if prefix is not None and before != prefix:
                raise ValueError("prompts of one batch must share the text before the video")
            prefix = before
            ans = answer_ids(tokenizer, qa.answer, eos_id)
            answer_spans.append((len(after), len(ans)))
            seqs.append(after + ans)
            video_idx.append(b)
    n = max(len(s) for s in seqs)
    text = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    rows, targets = [], []
    for r, (seq, (start, count)) in enumerate(zip(seqs, answer_spans)):
        text[r, :len(seq)] = torch.tensor(seq)
        rows += [r * n + start - 1 + j for j in range(count)]       # logits at t predict token t + 1
        targets += seq[start:start + count]
    return TrainBatch(pixels, torch.tensor(prefix), text, torch.tensor(video_idx), torch.tensor(rows),
                      torch.tensor(targets), list(ratios))


# below this many windows the layerwise encoder was no faster on 2 cores in a one-off timing (not a committed
# benchmark: 2 threads, random per-window ratios, layerwise vs window after window, median of 4: 64 frames
# (6 windows) 0.55 vs 0.53 s a step, 256 frames (22 windows) 0.66 vs 0.78 s); over whole steps of videos of up
# to 512 frames, bench.train_speed measured 1.03-1.07x (results/train_speed_layerwise_cpu.json)
LAYERWISE_MIN_WINDOWS = 16


def batch_logits(model, batch: TrainBatch, layerwise: bool = False) -> torch.Tensor:
    """float32 logits [A, vocab] at the answer-predicting positions of the batch; layerwise: encode videos
    of at least LAYERWISE_MIN_WINDOWS windows with encode_video_layerwise (the same function, other float
    rounding)."""
    visual = visual_tokens(model, batch.pixels)
    fused = Fused(model)
    windows = -(-visual.shape[1] // model.config.beacon_window)
    encode = encode_video_layerwise if layerwise and windows >= LAYERWISE_MIN_WINDOWS else encode_video
    kept = encode(model, batch.prefix_ids, visual, batch.ratios, fused)
    return text_logits(model, kept, batch.text_ids, batch.video_idx, batch.rows, fused)


def batch_loss(model, batch: TrainBatch, layerwise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean next-token cross-entropy over answer tokens, per-token correctness [A] bool)."""
    logits = batch_logits(model, batch, layerwise)
    return F.cross_entropy(logits, batch.targets), logits.argmax(-1) == batch.targets
