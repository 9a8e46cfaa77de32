"""An independent Video-XL written from DESIGN.md section 1, in float64, the way the released code computes
it: full re-rotation of pre-RoPE kept keys at every call, explicit masks. The engine's reference in
tests/model/test_vst_semantics.py and tests/engine/test_prompt_logprobs.py."""
from __future__ import annotations

import math

import torch

from vxl import IMAGE_TOKEN_INDEX


def rope(x, pos, theta):                                    # x (heads, n, hd), pos (n,)
    hd = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = pos.double()[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    return x * cos + torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1) * sin


class Reference:
    """Processes one sequence step by step; kept[layer] = (pre-RoPE K, V) of every kept entry."""

    def __init__(self, model, cfg):
        self.p = {k: v.double() for k, v in model.state_dict().items()}
        self.cfg = cfg
        self.kept = [(torch.zeros(cfg.num_key_value_heads, 0, cfg.head_dim, dtype=torch.float64),) * 2
                     for _ in range(cfg.num_hidden_layers)]

    def norm(self, x, w):
        return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps)

    def step(self, x, is_vst, keep):
        """x (n, H) embeddings of the step; keep (n,) bool rows whose K/V are kept afterwards."""
        cfg, p = self.cfg, self.p
        m, n, hd = self.kept[0][0].shape[1], x.shape[0], cfg.head_dim
        pos = torch.arange(m, m + n)
        for i in range(cfg.num_hidden_layers):
            a = f"model.layers.{i}."
            h = self.norm(x, p[a + "input_layernorm.weight"])
            proj = {}
            for name in "qkv":
                ordinary = h @ p[a + f"self_attn.{name}_proj.weight"].T + p[a + f"self_attn.{name}_proj.bias"]
                beacon = h @ p[a + f"self_attn.beacon_{name}_proj.weight"].T + p[a + f"self_attn.beacon_{name}_proj.bias"]
                proj[name] = torch.where(is_vst[:, None], beacon, ordinary)
            q = proj["q"].view(n, -1, hd).transpose(0, 1)
            k = proj["k"].view(n, -1, hd).transpose(0, 1)
            v = proj["v"].view(n, -1, hd).transpose(0, 1)
            k_all = torch.cat([self.kept[i][0], k], 1)          # pre-RoPE, re-rotated every call
            v_all = torch.cat([self.kept[i][1], v], 1)
            q = rope(q, pos, cfg.rope_theta)
            k_all = rope(k_all, torch.arange(m + n), cfg.rope_theta)
            group = cfg.num_attention_heads // cfg.num_key_value_heads
            k_all, v_all_r = k_all.repeat_interleave(group, 0), v_all.repeat_interleave(group, 0)
            mask = torch.ones(n, m + n, dtype=torch.bool)
            mask[:, m:] = torch.ones(n, n, dtype=torch.bool).tril()
            s = (q @ k_all.transpose(1, 2)) / math.sqrt(hd)
            attn = torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v_all_r
            attn = attn.transpose(0, 1).reshape(n, -1)
            out = attn @ p[a + "self_attn.o_proj.weight"].T
            if "o" in cfg.beacon_param:                          # VST rows through beacon_o_proj
                out = torch.where(is_vst[:, None], attn @ p[a + "self_attn.beacon_o_proj.weight"].T, out)
            x = x + out
            h = self.norm(x, p[a + "post_attention_layernorm.weight"])
            gate = h @ p[a + "mlp.gate_proj.weight"].T
            x = x + (torch.nn.functional.silu(gate) * (h @ p[a + "mlp.up_proj.weight"].T)) @ p[a + "mlp.down_proj.weight"].T
            self.kept[i] = (torch.cat([self.kept[i][0], k[:, keep]], 1), torch.cat([self.kept[i][1], v[:, keep]], 1))
        return self.norm(x, p["model.norm.weight"]) @ p["lm_head.weight"].T

    def text(self, ids):
        x = self.p["model.embed_tokens.weight"][torch.tensor(ids)]
        return self.step(x, torch.zeros(len(ids), dtype=torch.bool), torch.ones(len(ids), dtype=torch.bool))

    def video(self, embeds, ratio):
        rem, w = 0, self.cfg.beacon_window
        for start in range(0, embeds.shape[0], w):
            raw = embeds[start:start + w].double()
            nb = (raw.shape[0] + rem) // ratio
            slots = torch.arange(raw.shape[0] + nb)
            is_vst = slots % (ratio + 1) == ratio - rem
            x = torch.empty(len(slots), raw.shape[1], dtype=torch.float64)
            x[~is_vst] = raw
            x[is_vst] = self.p["model.beacon_embed_tokens.weight"][0]
            self.step(x, is_vst, is_vst)
            rem = (raw.shape[0] + rem) % ratio

    def generate(self, ids, embeds, ratio, steps):
        ph = ids.index(IMAGE_TOKEN_INDEX)
        self.text(ids[:ph])
        self.video(embeds, ratio)
        logits = self.text(ids[ph + 1:])[-1]
        out, all_logits = [], []
        for _ in range(steps):
            all_logits.append(logits)
            out.append(int(logits.argmax()))
            logits = self.text([out[-1]])[-1]
        return out, torch.stack(all_logits)
