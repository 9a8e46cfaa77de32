"""Stage 0, the small-scale stand-in for the real Video-XL starting from a pretrained CLIP and a pretrained
LLM: (a) the vision tower alone on single synthetic frames (is a thing present; its colour, shape or
digit; the heads are thrown away), (b) the language model alone on text with full next-token loss
(repeated random spans, and option lists "red (A)" copied back), which forms the copy heads that
answering "red (A)" needs. Only the model's own weights carry over to stage 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from demo_model.forward import empty_kept, text_logits
from vxl.demo.render import COLOURS, DIGITS, SHAPES, background, draw_thing, to_uint8
from vxl.demo.tasks import TASKS, draw_questions, random_thing
from vxl.engine.preprocess import preprocess_frames

# label sets: the last class of each head means "no thing" / "not applicable"
HEADS = {"colour": list(COLOURS), "shape": list(SHAPES), "digit": list(DIGITS)}


@dataclass
class PretrainConfig:
    steps: int = 3500
    batch_size: int = 64
    lr: float = 3e-3
    thing_prob: float = 0.75
    text_steps: int = 1600
    text_batch_size: int = 32
    text_lr: float = 1e-3


def frame_batch(rng: np.random.Generator, num: int, size: int, thing_prob: float) -> tuple[np.ndarray, dict]:
    """num frames (uint8 [num, S, S, 3]) from num different backgrounds, most with one thing, and labels."""
    frames = np.concatenate([background(rng, 1, size) for _ in range(num)])
    labels = {name: np.full(num, len(values)) for name, values in HEADS.items()}
    for i in range(num):
        if rng.uniform() >= thing_prob:
            continue
        thing = random_thing(rng)
        draw_thing(rng, frames[i], thing)
        labels["colour"][i] = HEADS["colour"].index(thing.colour)
        if thing.shape is not None:
            labels["shape"][i] = HEADS["shape"].index(thing.shape)
        else:
            labels["digit"][i] = HEADS["digit"].index(thing.digit)
    return to_uint8(frames), labels


def vision_params(model) -> list[nn.Parameter]:
    """What pretrain_vision changes in the model (its heads are its own)."""
    return list(model.model.vision_tower.parameters())


def text_params(model) -> list[nn.Parameter]:
    """What pretrain_text changes: everything but the vision tower and the projector."""
    return [p for n, p in model.named_parameters() if not n.startswith(("model.vision_tower", "model.mm_projector"))]


def pretrain_vision(model, processor, cfg: PretrainConfig, seed: int, log=print) -> list[float]:
    """Train model.model.vision_tower in place with linear heads on its mean patch feature; returns the
    per-step losses."""
    tower = model.model.vision_tower
    width = tower.clip_config.hidden_size
    gen = torch.Generator().manual_seed(seed)
    heads = nn.ModuleDict({name: nn.Linear(width, len(values) + 1) for name, values in HEADS.items()})
    for head in heads.values():
        nn.init.normal_(head.weight, std=0.02, generator=gen)
        nn.init.zeros_(head.bias)
    params = vision_params(model) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    size = tower.clip_config.image_size
    losses = []
    for step in range(cfg.steps):
        rng = np.random.default_rng([seed, 1_000_000 + step])
        frames, labels = frame_batch(rng, cfg.batch_size, size, cfg.thing_prob)
        feats = tower(preprocess_frames(torch.from_numpy(frames), processor)).mean(1)     # (N, C)
        loss = sum(F.cross_entropy(heads[name](feats), torch.from_numpy(y)) for name, y in labels.items())
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / 20)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log(f"vision pretrain step {step + 1}: loss {np.mean(losses[-50:]):.3f}")
    return losses


def text_sequence(rng: np.random.Generator, tokenizer, vocab: int) -> tuple[list[int], list[int]]:
    """(token ids, positions whose next token is scored). Half the time a random span repeated (scored on
    the repeat), otherwise a question's option lines followed by the same lines in a new order (scored
    on everything but the first token of each copied line, which is a free choice)."""
    if rng.uniform() < 0.5:
        span = rng.integers(3, vocab, int(rng.integers(8, 24))).tolist()
        return span + span, list(range(len(span) - 1, 2 * len(span) - 1))
    _, qas = draw_questions(rng, str(rng.choice(TASKS)), 32)
    lines = [line for line in qas[0].prompt.split("\n") if line.endswith(")")]
    ids = tokenizer.encode("\n".join(lines) + "\n", add_special_tokens=False)
    scored = []
    for i in rng.permutation(len(lines)):
        line = tokenizer.encode(lines[i] + "\n", add_special_tokens=False)
        scored += list(range(len(ids), len(ids) + len(line) - 1))      # predicts line[1:], given line[0]
        ids += line
    return ids, scored


def pretrain_text(model, tokenizer, cfg: PretrainConfig, seed: int, log=print) -> list[float]:
    """Train the language model (embeddings, decoder, lm_head) in place on text_sequence batches."""
    params = text_params(model)
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.01)
    vocab, losses = len(tokenizer), []
    for step in range(cfg.text_steps):
        rng = np.random.default_rng([seed, 2_000_000 + step])
        seqs = [text_sequence(rng, tokenizer, vocab) for _ in range(cfg.text_batch_size)]
        n = max(len(ids) for ids, _ in seqs)
        text = torch.zeros(len(seqs), n, dtype=torch.long)
        rows, targets = [], []
        for r, (ids, scored) in enumerate(seqs):
            text[r, :len(ids)] = torch.tensor(ids)
            rows += [r * n + p for p in scored]
            targets += [ids[p + 1] for p in scored]
        kept = empty_kept(model, len(seqs), model.model.embed_tokens.weight)
        logits = text_logits(model, kept, text, torch.arange(len(seqs)), torch.tensor(rows))
        loss = F.cross_entropy(logits, torch.tensor(targets))
        for group in opt.param_groups:
            group["lr"] = cfg.text_lr * min(1.0, (step + 1) / 20)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            log(f"text pretrain step {step + 1}: loss {np.mean(losses[-50:]):.3f}")
    return losses
