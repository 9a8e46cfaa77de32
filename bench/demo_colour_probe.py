"""Where a demo checkpoint keeps colour, on `keyed` videos (2-4 cards of distinct colours; "What shape was
the red object?"): what selecting a card by the colour a question names, as counting must, needs.

    python -m bench.demo_colour_probe [--checkpoint DIR] [--frames 24] [--ratio 4] [--videos 240] [--out F.json]

Per decoder layer, from the text rows' attention over the video's kept K/V (greedy answers are not needed):
- `query_colour`: held-out accuracy of a ridge probe reading the asked colour from the query of the row
  that predicts the answer's first token (chance 1/8);
- `key_colour` / `value_colour`: the same probe reading a card's colour from the mean key (RoPE undone) /
  value of the VSTs that cover its frame (chance 1/8);
- `card_mass`: that row's attention on the cards' VSTs, averaged over videos, for the head that puts the
  most there; `asked_share`: the part of that head's card mass on the asked card (averaged over videos);
  `blind_share`: what asked_share would be if the head ignored colour (the mean of 1 / cards shown).
A model that selects by colour needs the colour in the query and in the keys of one layer, and an
asked_share well above blind_share there.
"""
from __future__ import annotations

import argparse
import contextlib
import json

import numpy as np
import torch
import torch.nn.functional as F

from vxl.train.render import COLOURS

COLOUR_NAMES = list(COLOURS)


def ridge_probe(x: np.ndarray, y: np.ndarray, num_classes: int, train_frac: float = 2 / 3,
                alpha: float = 10.0) -> float:
    """Held-out accuracy of a one-vs-all ridge regression from features x [N, D] to labels y [N]: fit on
    the first train_frac of the rows (standardised with their statistics), scored on the rest."""
    n_train = int(len(y) * train_frac)
    if not 0 < n_train < len(y):
        raise ValueError(f"need rows on both sides of the split, got {len(y)} rows")
    mean, std = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    z = (x - mean) / std
    targets = np.eye(num_classes)[y[:n_train]]
    w = np.linalg.solve(z[:n_train].T @ z[:n_train] + alpha * np.eye(x.shape[1]), z[:n_train].T @ targets)
    return float((np.argmax(z[n_train:] @ w, 1) == y[n_train:]).mean())


@contextlib.contextmanager
def capture_attention():
    """Record (q, k, v) of every F.scaled_dot_product_attention call made inside the block."""
    calls, orig = [], F.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kwargs):
        calls.append((q.detach(), k.detach(), v.detach()))
        return orig(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = sdpa
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = orig


def vst_cover(frame: int, window_frames: int, tokens_per_frame: int, ratio: int) -> list[int]:
    """Indices (in kept order, every window whole and compressed at one ratio dividing its length) of the
    VSTs whose raw tokens include some of `frame`'s."""
    per_window = window_frames * tokens_per_frame // ratio
    lo = (frame % window_frames) * tokens_per_frame
    first, last = lo // ratio, (lo + tokens_per_frame - 1) // ratio
    return [frame // window_frames * per_window + j for j in range(first, last + 1)]


def unrotate(k: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Undo RoPE on k [n, heads, hd] at positions [n]: forward.rotate by the negated positions."""
    from vxl.train.forward import rope_tables, rotate
    return rotate(k, rope_tables(-positions, k.shape[-1], theta))


def colour_probe(loaded, num_frames: int = 24, ratio: int = 4, num_videos: int = 240, seed: int = 0) -> dict:
    from vxl.train.batch import batch_logits, make_batch
    from vxl.train.data import make_sample
    model, tok = loaded.model.eval(), loaded.tokenizer
    cfg = model.config
    tpf = model.tokens_per_frame
    window_frames = cfg.beacon_window // tpf
    if num_frames % window_frames or cfg.beacon_window % ratio:
        raise ValueError(f"num_frames must be whole windows of {window_frames} frames and ratio divide "
                         f"{cfg.beacon_window}, got {num_frames} and {ratio}")
    theta = model.model.layers[0].self_attn.rope_theta
    layers = cfg.num_hidden_layers
    queries, keys, values = ([[] for _ in range(layers)] for _ in range(3))
    asked, card_colour = [], []
    card_mass = np.zeros((layers, model.model.layers[0].self_attn.num_heads))
    asked_share = np.zeros_like(card_mass)
    blind = 0.0
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    for i in range(num_videos):
        sample = make_sample("retrieval", num_frames, [7_900_001, seed, i], loaded.image_processor.crop_size,
                             keyed_prob=1.0)
        qa = sample.qas[0]
        colour = next(t.colour for _, _, t in sample.events if t.shape == qa.right)    # shapes are distinct
        batch = make_batch([sample], tok, loaded.image_processor, eos, pad, [ratio] * (num_frames // window_frames))
        with torch.no_grad(), capture_attention() as calls:
            batch_logits(model, batch)
        text_calls = calls[-layers:]                    # the text rows' pass is the last one
        row, start = int(batch.rows[0]), len(batch.prefix_ids)
        covers = {t.colour: vst_cover(f, window_frames, tpf, ratio) for f, _, t in sample.events}
        num_vst = num_frames // window_frames * (cfg.beacon_window // ratio)
        kept_pos = torch.arange(start, start + num_vst)
        k_card = covers[sample.events[0][2].colour]     # the first card: its colour is the key/value label
        other = sorted({j for c, js in covers.items() if c != colour for j in js} - set(covers[colour]))
        blind += 1 / len(covers)
        asked.append(COLOUR_NAMES.index(colour))
        card_colour.append(COLOUR_NAMES.index(sample.events[0][2].colour))
        for layer, (q, k, v) in enumerate(text_calls):
            q_row = q[0, :, row]                                            # (heads, hd)
            k_all = k[0].repeat_interleave(q.shape[1] // k.shape[1], 0)     # (heads, M + n, hd)
            scores = (q_row[:, None] * k_all).sum(-1) / q.shape[-1] ** 0.5
            scores[:, start + num_vst + row + 1:] = float("-inf")            # the row's causal mask
            attn = scores.softmax(-1)[:, start:start + num_vst]              # (heads, VSTs)
            on_asked, on_other = attn[:, covers[colour]].sum(-1), attn[:, other].sum(-1)     # (heads,)
            card_mass[layer] += (on_asked + on_other).numpy()
            asked_share[layer] += (on_asked / (on_asked + on_other).clamp_min(1e-30)).numpy()
            queries[layer].append(q_row.flatten().numpy())
            vst_k = unrotate(k[0, :, start:start + num_vst].transpose(0, 1), kept_pos, theta)   # (VSTs, nkv, hd)
            keys[layer].append(vst_k[k_card].mean(0).flatten().numpy())
            values[layer].append(v[0, :, start:start + num_vst].transpose(0, 1)[k_card].mean(0).flatten().numpy())
    asked, card_colour = np.array(asked), np.array(card_colour)
    out = []
    for layer in range(layers):
        head = int(np.argmax(card_mass[layer]))
        out.append({"layer": layer,
                    "query_colour": ridge_probe(np.array(queries[layer]), asked, len(COLOUR_NAMES)),
                    "key_colour": ridge_probe(np.array(keys[layer]), card_colour, len(COLOUR_NAMES)),
                    "value_colour": ridge_probe(np.array(values[layer]), card_colour, len(COLOUR_NAMES)),
                    "card_mass": card_mass[layer, head] / num_videos,
                    "asked_share": asked_share[layer, head] / num_videos, "blind_share": blind / num_videos})
    return {"frames": num_frames, "ratio": ratio, "videos": num_videos, "layers": out}


def main(argv: list[str] | None = None) -> int:
    from vxl.model.loader import load_checkpoint
    from vxl.train.demo import demo_checkpoint_path
    p = argparse.ArgumentParser(prog="python -m bench.demo_colour_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the shipped demo model)")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--ratio", type=int, default=4, help="default 4: one VST per frame, so no VST holds two cards")
    p.add_argument("--videos", type=int, default=240)
    p.add_argument("--num-threads", type=int, default=2)
    p.add_argument("--out", default=None, help="also write the result here, with the hardware / versions header")
    args = p.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    path = args.checkpoint or demo_checkpoint_path()
    result = colour_probe(load_checkpoint(path, torch.device("cpu"), torch.float32), args.frames, args.ratio,
                          args.videos)
    for row in result["layers"]:
        print(json.dumps(row))
    if args.out:
        from bench.common import env_info, write_json
        write_json(args.out, {"env": env_info(), "checkpoint": args.checkpoint or "vxl/data/demo", **result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
