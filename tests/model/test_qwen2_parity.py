"""Our Qwen2 layer stack (no VSTs) against transformers' Qwen2 on a tiny random config."""
from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from helpers import small_config
from vxl.engine.kv_cache import KVCache
from vxl.engine.runner import ModelRunner
from vxl.engine.sequence import Chunk
from vxl.kernels import get_backend
from vxl.model.video_llm import VideoXLForCausalLM


class _Seq:  # the runner only needs a block table and a kept length from a sequence
    def __init__(self, table):
        self.table = table

    @property
    def kept_len(self):
        return self.table.num_tokens


def test_text_logits_match_transformers_qwen2():
    cfg = small_config(vocab_size=120, num_hidden_layers=3)
    hf_cfg = Qwen2Config(vocab_size=120, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=3, num_attention_heads=cfg.num_attention_heads,
                         num_key_value_heads=cfg.num_key_value_heads, rope_theta=cfg.rope_theta,
                         rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    ours = VideoXLForCausalLM(cfg)
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    assert not unexpected and all("beacon" in k for k in missing)
    ours.prepare()
    ids = torch.randint(0, 120, (1, 37))
    with torch.no_grad():
        expected = hf(ids).logits[0]
        kv_cache = KVCache(3, 8, 7, cfg.num_key_value_heads, cfg.head_dim, torch.float32, torch.device("cpu"))
        seq = _Seq(kv_cache.new_table())
        runner = ModelRunner(ours, get_backend("torch"), kv_cache)
        chunk = Chunk(seq=seq, kind="text", num_kept=37, sample=True, token_ids=ids[0].tolist())
        hidden, _, _ = runner.forward([chunk])
        got = ours.compute_logits(hidden)
    assert (got - expected).abs().max() < 1e-5
