"""The demo model's training loop: deterministic from a seed (step s draws its videos, lengths and per-window ratios
from (seed, s)), resumable from `state.pt` in the run directory, AdamW with warmup + cosine decay, a
length curriculum, and the final export in the official Video-XL checkpoint layout.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from demo_model.arch import DemoArch, build_demo_model
from demo_model.batch import TrainBatch, batch_loss, make_batch
from demo_model.data import make_training_sample
from demo_model.malloc import keep_freed_memory
from demo_model.pretrain import PretrainConfig, pretrain_text, pretrain_vision, text_params, vision_params
from vxl.demo.tasks import DIGIT_PROB, TASKS
from vxl.vst import window_lengths
from vxl.model.tiny import save_checkpoint


EXPORT_SHARDS = 3          # keeps each shipped safetensors file under 2 MiB (the repository's file limit)

# options of earlier experiments, gone since; a saved config may name them only at these values, which every
# shipped stage used (so their committed configs and states still load)
RETIRED = {"open_prob": 0.0, "count_every_colour": False, "count_others": 2, "ranks": 1}


@dataclass
class TrainConfig:
    out_dir: str = "runs/demo"
    seed: int = 0
    steps: int = 2200
    batch_frames: int = 1024            # videos per step = clamp(batch_frames // frames, min_batch, max_batch)
    min_batch: int = 4
    max_batch: int = 16
    lr: float = 1e-3
    min_lr_frac: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    min_frames: int = 8
    max_frames: int = 256
    # curriculum: "image-like" clips first (short, things shown on many frames, no counting), then things
    # shrink to single frames (cover -> 0 at cover_steps) while the longest video grows to max_frames
    hold_steps: int = 200
    hold_frames: int = 16
    cover: float = 1.0
    cover_steps: int = 600
    ramp_steps: int = 1200
    task_weights: list[float] = field(default_factory=lambda: [0.45, 0.3, 0.25])   # in TASKS order
    uniform_ratio_prob: float = 0.0     # share of steps whose windows all use one ratio (as at inference)
    digit_prob: float = DIGIT_PROB      # share of retrieval needles that are digits (the rest are shapes)
    keyed_prob: float = 0.0             # share of retrieval videos asking the shape of the card of a named colour
    card_window_prob: float = 0.0       # share of steps whose windows showing a thing (in any video of the batch)
                                        # get the highest ratio and the others the lowest
    save_every: int = 50
    log_every: int = 10
    num_threads: int = 1                # torch threads (another count gives other float rounding)
    init_from: str = ""                 # a run's state.pt or an exported checkpoint directory: start from its
                                        # weights (fresh optimizer, no stage 0)
    init_vision_steps: int = 0          # with init_from: first retrain the vision tower alone this many steps
                                        # (stage 0's vision task, fresh heads) to restore detail it lost
    freeze_vision: bool = False         # end-to-end steps leave the vision tower as stage 0 (or init_from)
                                        # left it, as a pretrained CLIP; the projector still trains
    layerwise: bool = False             # encode long videos a layer at a time (forward.encode_video_layerwise):
                                        # the same function, other float rounding
    arch: DemoArch = field(default_factory=DemoArch)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self):
        if not (4 <= self.min_frames <= self.max_frames and self.hold_frames <= self.max_frames):
            raise ValueError("video lengths need 4 <= min_frames <= max_frames and hold_frames <= max_frames, got "
                             f"min_frames={self.min_frames}, hold_frames={self.hold_frames}, "
                             f"max_frames={self.max_frames}")
        if not 0.0 <= self.card_window_prob <= 1.0:
            raise ValueError(f"card_window_prob must be in [0, 1], got {self.card_window_prob}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        for name, value in RETIRED.items():
            if d.pop(name, value) != value:
                raise ValueError(f"option {name}={d.get(name)!r} is no longer supported (only {value!r})")
        return cls(**{**d, "arch": DemoArch(**d.get("arch", {})), "pretrain": PretrainConfig(**d.get("pretrain", {}))})


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _ramp(step: int, start: int, end: int) -> float:
    """0 before `start`, 1 from `end`, linear in between."""
    return min(1.0, max(0.0, (step - start) / max(1, end - start)))


def frames_at(cfg: TrainConfig, step: int, rng: np.random.Generator) -> int:
    """Video length of a step: uniform in [min_frames, the curriculum's current longest], a multiple of 4."""
    longest = cfg.hold_frames + _ramp(step, cfg.hold_steps, cfg.ramp_steps) * (cfg.max_frames - cfg.hold_frames)
    longest = max(longest, cfg.min_frames)      # a curriculum holding shorter than min_frames holds at min_frames
    return max(4, int(rng.uniform(cfg.min_frames, longest + 1)) // 4 * 4)


def step_batch(cfg: TrainConfig, loaded, step: int) -> TrainBatch:
    """The batch of step `step`: a pure function of (cfg.seed, step). `loaded` needs only .tokenizer,
    .image_processor and .config.beacon_window (a LoadedModel, or a StepBatches)."""
    rng = np.random.default_rng([cfg.seed, step])
    num_frames = frames_at(cfg, step, rng)
    batch = int(np.clip(cfg.batch_frames // num_frames, cfg.min_batch, cfg.max_batch))
    weights = np.array(cfg.task_weights, dtype=float)
    if step < cfg.hold_steps:
        weights[TASKS.index("counting")] = 0.0
    tasks = rng.choice(TASKS, size=batch, p=weights / weights.sum())
    cover = cfg.cover * (1 - _ramp(step, cfg.hold_steps, cfg.cover_steps))
    samples = [make_training_sample(str(t), num_frames, [cfg.seed, step, b], cfg.arch.image_size, cover=cover,
                                    digit_prob=cfg.digit_prob, keyed_prob=cfg.keyed_prob)
               for b, t in enumerate(tasks)]
    num_windows = len(window_lengths(num_frames * cfg.arch.tokens_per_frame, loaded.config.beacon_window))
    ratios = [int(r) for r in rng.choice(cfg.arch.ratios, size=num_windows)]
    if cfg.uniform_ratio_prob > 0 and rng.uniform() < cfg.uniform_ratio_prob:
        ratios = [ratios[0]] * num_windows
    if cfg.card_window_prob > 0 and rng.uniform() < cfg.card_window_prob:
        ratios = card_window_ratios(samples, num_windows, loaded.config.beacon_window // cfg.arch.tokens_per_frame,
                                    cfg.arch.ratios)
    tok = loaded.tokenizer
    return make_batch(samples, tok, loaded.image_processor, tok.convert_tokens_to_ids("<|im_end|>"),
                      tok.convert_tokens_to_ids("<|endoftext|>"), ratios)


def card_window_ratios(samples, num_windows: int, frames_per_window: int, choices: list[int]) -> list[int]:
    """One ratio per window: the highest of `choices` for every window in which some sample shows a thing,
    the lowest for the rest. So a thing is squeezed into a VST with background frames, as at ratio 16 on a
    long video, among many VSTs of background, as on a long video."""
    shown = {w for s in samples for first, length, _ in s.events
             for w in range(first // frames_per_window, (first + length - 1) // frames_per_window + 1)}
    return [max(choices) if w in shown else min(choices) for w in range(num_windows)]


class StepBatches(torch.utils.data.Dataset):
    """The batches of a run, indexed by step, without the model: what a data worker process holds."""

    def __init__(self, cfg: TrainConfig, loaded):
        self.cfg, self.tokenizer, self.image_processor = cfg, loaded.tokenizer, loaded.image_processor
        self.config = loaded.config

    def __getitem__(self, step: int) -> TrainBatch:
        return step_batch(self.cfg, self, step)


def batches(cfg: TrainConfig, loaded, start: int, end: int, data_workers: int):
    """The batches of steps start..end-1 in order. data_workers > 0 renders them in that many worker
    processes, up to two steps per worker ahead of training (the same batches: each is a pure function of
    its step); 0 renders each in this process when it is needed."""
    if data_workers <= 0 or end <= start:
        for step in range(start, end):
            yield step_batch(cfg, loaded, step)
        return
    yield from torch.utils.data.DataLoader(StepBatches(cfg, loaded), batch_size=None, sampler=range(start, end),
                                           num_workers=data_workers, prefetch_factor=2)


def initial_weights(path: str) -> dict[str, torch.Tensor]:
    """The model weights of a run's state.pt, or of a checkpoint directory in the official layout (such as
    the shipped vxl/data/demo)."""
    if os.path.isdir(path):
        from vxl.model.loader import load_checkpoint
        return load_checkpoint(path, torch.device("cpu"), torch.float32).model.state_dict()
    return torch.load(path, weights_only=True)["model"]


def save_state(path: str, model, opt, step: int, cfg: TrainConfig) -> None:
    """Write the run's state atomically."""
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "config": asdict(cfg)}, tmp)
    os.replace(tmp, path)      # a crash mid-save leaves the previous state intact


def train(cfg: TrainConfig, resume: bool = False, export_dir: str | None = None,
          stop_after: int | None = None, data_workers: int = 0) -> dict:
    """Run (or resume) training to cfg.steps, or only up to step `stop_after` (a resumable pause); export
    the model to `export_dir` when given. data_workers: processes rendering the next steps' videos while
    this one trains (the results do not depend on it). Returns the last log record."""
    os.makedirs(cfg.out_dir, exist_ok=True)
    state_path, log_path = os.path.join(cfg.out_dir, "state.pt"), os.path.join(cfg.out_dir, "log.jsonl")
    torch.set_num_threads(cfg.num_threads)
    keep_freed_memory()                 # faster, same results (demo_model.malloc)
    loaded = build_demo_model(cfg.arch, cfg.seed)
    model = loaded.model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    start = 0
    if resume and os.path.exists(state_path):
        state = torch.load(state_path, weights_only=True)
        # options added since the state was written count as their defaults (which reproduce older runs)
        saved = json.loads(json.dumps(asdict(TrainConfig.from_dict(state["config"]))))
        if saved != json.loads(json.dumps(asdict(cfg))):
            raise ValueError(f"{state_path} was written with a different configuration: {state['config']}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    elif cfg.init_from:     # a further stage on top of an earlier run's weights
        model.load_state_dict(initial_weights(cfg.init_from))
        if cfg.init_vision_steps > 0:
            vision = PretrainConfig(**{**asdict(cfg.pretrain), "steps": cfg.init_vision_steps})
            pretrain_phase(log_path, "vision", vision.steps,
                           lambda: pretrain_vision(model, loaded.image_processor, vision, cfg.seed))
        save_state(state_path, model, opt, 0, cfg)
    else:       # stage 0: the vision tower alone, the language model alone, then a state to resume from
        pretrain_phase(log_path, "vision", cfg.pretrain.steps,
                       lambda: pretrain_vision(model, loaded.image_processor, cfg.pretrain, cfg.seed))
        pretrain_phase(log_path, "text", cfg.pretrain.text_steps,
                       lambda: pretrain_text(model, loaded.tokenizer, cfg.pretrain, cfg.seed))
        save_state(state_path, model, opt, 0, cfg)
    model.model.vision_tower.requires_grad_(not cfg.freeze_vision)     # no graph, no update when frozen
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=1)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    record = run_steps(cfg, loaded, opt, start, end, state_path, log_path, data_workers)
    if export_dir is not None:
        model.eval()
        save_checkpoint(loaded, export_dir, num_shards=EXPORT_SHARDS)
    return record


def pretrain_phase(log_path: str, name: str, steps: int, run) -> None:
    """Run one pretraining phase and log its wall time as {"phase", "steps", "seconds"} (step records
    have a "step" key instead)."""
    t0 = time.perf_counter()
    run()
    append_log(log_path, {"phase": name, "steps": steps, "seconds": time.perf_counter() - t0})


def append_log(log_path: str, record: dict) -> None:
    """Print one log record and append it to log.jsonl."""
    print(json.dumps(record), flush=True)
    with open(log_path, "a") as f:
        f.write(json.dumps(record) + "\n")


def run_steps(cfg: TrainConfig, loaded, opt, start: int, end: int, state_path: str, log_path: str,
              data_workers: int = 0) -> dict:
    model, record = loaded.model, {}
    window, t_start = [], time.perf_counter()
    t0 = t_start
    for step, batch in enumerate(batches(cfg, loaded, start, end, data_workers), start):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        # every answer is (word or letter tokens) + <|im_end|>; the first token decides the answer
        first = torch.ones(len(batch.rows), dtype=torch.bool)
        first[1:] = batch.rows[1:] // batch.text_ids.shape[1] != batch.rows[:-1] // batch.text_ids.shape[1]
        loss, correct = batch_loss(model, batch, cfg.layerwise)
        mean_loss, first_acc = loss.item(), correct[first].float().mean().item()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        # a step's time includes waiting for its batch (the time since the previous step ended)
        t1 = time.perf_counter()
        window.append((mean_loss, first_acc, batch.pixels.shape[1], t1 - t0))
        t0 = t1
        if (step + 1) % cfg.log_every == 0 or step + 1 == end:
            arr = np.array(window)
            record = {"step": step + 1, "loss": float(arr[:, 0].mean()), "first_token_acc": float(arr[:, 1].mean()),
                      "mean_frames": float(arr[:, 2].mean()), "sec_per_step": float(arr[:, 3].mean()),
                      "lr": lr_at(cfg, step), "elapsed_s": time.perf_counter() - t_start}
            window = []
            append_log(log_path, record)
        if (step + 1) % cfg.save_every == 0 or step + 1 == end:
            save_state(state_path, model, opt, step + 1, cfg)
    return record
