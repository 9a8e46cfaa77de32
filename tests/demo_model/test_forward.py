"""The training forward computes the inference engine's function: teacher-forced answer log-probs equal
`vxl.LLM(...).generate`'s (fp32, 1e-4) on a random small demo-layout model, for fixed ratios with partial
windows and carried remainders; per-window ratios match an independent float64 step-by-step reference.
Both encoders (window after window, and every window of a layer at once) are checked, and against each
other (kept K/V and gradients)."""
from __future__ import annotations

import math

import pytest
import torch

from demo_model import batch as batch_module
from demo_model.arch import DemoArch, build_demo_model
from demo_model.batch import answer_ids, batch_logits, make_batch, split_prompt
from demo_model.forward import encode_video, encode_video_layerwise, text_logits, window_slots
from vxl import LLM, SamplingParams
from vxl.demo.tasks import make_sample
from vxl.model.tiny import save_checkpoint

# window = 3 frames x 4 tokens = 12: ratio 8 carries remainders, 5 frames leave a partial window
ARCH = DemoArch(hidden_size=48, num_layers=2, num_heads=6, num_kv_heads=2, intermediate_size=64,
                clip_hidden_size=32, clip_intermediate_size=48, clip_heads=2, frames_per_window=3,
                rope_theta=1e4)


def randomise(model, seed: int) -> None:
    """Weights of realistic scale, beacon weights unlike the ordinary ones, non-trivial norms."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "vision_tower" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if "embed" in name else 0.15))


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory):
    loaded = build_demo_model(ARCH, seed=1)
    randomise(loaded.model, 2)
    loaded.model.eval()
    path = tmp_path_factory.mktemp("demo_like")
    save_checkpoint(loaded, str(path))
    return loaded, str(path)


@pytest.mark.parametrize("layerwise", [False, True])
@pytest.mark.parametrize("ratio,num_frames", [(2, 7), (8, 5), (12, 9), (16, 10)])
def test_training_forward_equals_engine(demo_like, ratio, num_frames, layerwise, monkeypatch):
    monkeypatch.setattr(batch_module, "LAYERWISE_MIN_WINDOWS", 1)      # these videos have 1-3 windows
    loaded, path = demo_like
    tok = loaded.tokenizer
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
    samples = [make_sample(task, num_frames, [11, ratio, i], ARCH.image_size)
               for i, task in enumerate(["retrieval", "counting"])]
    num_windows = -(-num_frames * ARCH.tokens_per_frame // loaded.config.beacon_window)
    batch = make_batch(samples, tok, loaded.image_processor, eos, pad, [ratio] * num_windows)
    with torch.no_grad():
        train_lp = torch.log_softmax(batch_logits(loaded.model, batch, layerwise).double(), -1)
    requests = []           # teacher forcing: the answer's first j tokens go into the prompt
    for sample in samples:
        for qa in sample.qas:
            before, after = split_prompt(tok, qa.prompt)
            ans = answer_ids(tok, qa.answer, eos)
            requests += [{"prompt_token_ids": before + [-200] + after + ans[:j], "video": sample.frames,
                          "compression_ratio": ratio} for j in range(len(ans))]
    assert len(requests) == train_lp.shape[0]
    llm = LLM(path, device="cpu", dtype="float32", attention_backend="torch", max_logprobs=None)
    outs = llm.generate(requests, SamplingParams(max_tokens=1, ignore_eos=True, logprobs=len(tok)), use_tqdm=False)
    engine_lp = torch.tensor([[o.logprobs[0][t] for t in range(len(tok))] for o in outs], dtype=torch.float64)
    assert all(o.error is None for o in outs)
    assert (engine_lp - train_lp).abs().max() < 1e-4


def rope(x, pos, theta):                                     # x (heads, n, hd)
    hd = x.shape[-1]
    ang = pos.double()[:, None] / theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)[None]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    return x * cos + torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1) * sin


def reference_logits(model, prefix, visual, ratios, text):
    """Float64, one sequence, step by step as the released code: pre-RoPE kept keys re-rotated each call."""
    cfg, p = model.config, {k: v.double() for k, v in model.state_dict().items()}
    hd, nkv = cfg.head_dim, cfg.num_key_value_heads
    kept = [(torch.zeros(nkv, 0, hd, dtype=torch.float64),) * 2 for _ in range(cfg.num_hidden_layers)]
    norm = lambda x, w: w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    def step(x, is_vst, keep):
        m, n = kept[0][0].shape[1], x.shape[0]
        for i in range(cfg.num_hidden_layers):
            a = f"model.layers.{i}."
            h = norm(x, p[a + "input_layernorm.weight"])
            proj = {c: torch.where(is_vst[:, None], h @ p[a + f"self_attn.beacon_{c}_proj.weight"].T + p[a + f"self_attn.beacon_{c}_proj.bias"],
                                   h @ p[a + f"self_attn.{c}_proj.weight"].T + p[a + f"self_attn.{c}_proj.bias"]) for c in "qkv"}
            q, k, v = (proj[c].view(n, -1, hd).transpose(0, 1) for c in "qkv")
            k_all = rope(torch.cat([kept[i][0], k], 1), torch.arange(m + n), cfg.rope_theta)
            v_all = torch.cat([kept[i][1], v], 1)
            g = cfg.num_attention_heads // nkv
            s = rope(q, torch.arange(m, m + n), cfg.rope_theta) @ k_all.repeat_interleave(g, 0).transpose(1, 2)
            mask = torch.ones(n, m + n, dtype=torch.bool)
            mask[:, m:] = torch.ones(n, n, dtype=torch.bool).tril()
            attn = torch.softmax((s / math.sqrt(hd)).masked_fill(~mask, float("-inf")), -1) @ v_all.repeat_interleave(g, 0)
            x = x + attn.transpose(0, 1).reshape(n, -1) @ p[a + "self_attn.o_proj.weight"].T
            h = norm(x, p[a + "post_attention_layernorm.weight"])
            x = x + (torch.nn.functional.silu(h @ p[a + "mlp.gate_proj.weight"].T) * (h @ p[a + "mlp.up_proj.weight"].T)) @ p[a + "mlp.down_proj.weight"].T
            kept[i] = (torch.cat([kept[i][0], k[:, keep]], 1), torch.cat([kept[i][1], v[:, keep]], 1))
        return norm(x, p["model.norm.weight"]) @ p["lm_head.weight"].T

    emb = p["model.embed_tokens.weight"]
    step(emb[prefix], torch.zeros(len(prefix), dtype=torch.bool), torch.ones(len(prefix), dtype=torch.bool))
    rem, w = 0, cfg.beacon_window
    for start, ratio in zip(range(0, visual.shape[0], w), ratios):
        raw = visual[start:start + w].double()
        nb = (raw.shape[0] + rem) // ratio
        is_vst = torch.arange(raw.shape[0] + nb) % (ratio + 1) == ratio - rem
        x = torch.empty(len(is_vst), raw.shape[1], dtype=torch.float64)
        x[~is_vst], x[is_vst] = raw, p["model.beacon_embed_tokens.weight"][0]
        step(x, is_vst, is_vst)
        rem = (raw.shape[0] + rem) % ratio
    return step(emb[text], torch.zeros(len(text), dtype=torch.bool), torch.ones(len(text), dtype=torch.bool))


@pytest.mark.parametrize("encode", [encode_video, encode_video_layerwise])
def test_per_window_ratios_match_float64_reference(demo_like, encode):
    loaded, _ = demo_like
    model, gen = loaded.model, torch.Generator().manual_seed(5)
    visual = torch.randn(2, 58, ARCH.hidden_size, generator=gen)      # windows 12 x 4 + 10
    ratios = [8, 16, 2, 12, 4]                     # remainders carried: 4 (into ratio 16), 0, 0, 0, then 2
    prefix = torch.randint(0, 400, (5,), generator=gen)
    text = torch.randint(0, 400, (2, 7), generator=gen)
    with torch.no_grad():
        got = text_logits(model, encode(model, prefix, visual, ratios), text, torch.tensor([0, 1]))
    for b in range(2):
        want = reference_logits(model, prefix, visual[b], ratios, text[b])
        assert (got[b].double() - want).abs().max() < 1e-4 * want.abs().max()


# windows of 12 tokens; 16s after a short start leave windows with no VST (skipped: nothing kept)
@pytest.mark.parametrize("num_visual,ratios", [(58, [16, 16, 12, 16, 16]), (95, [4, 12, 16, 16, 16, 8, 16, 16]),
                                                (7, [16]), (7, [2]), (40, [12, 8, 16, 4])])
def test_layerwise_encoder_equals_window_after_window(demo_like, num_visual, ratios):
    """Kept K/V (values, order, count), the text's logits and every gradient agree with encode_video."""
    loaded, _ = demo_like
    model, gen = loaded.model, torch.Generator().manual_seed(num_visual)
    visual = torch.randn(3, num_visual, ARCH.hidden_size, generator=gen)
    prefix = torch.randint(0, 400, (4,), generator=gen)
    text = torch.randint(0, 400, (4, 6), generator=gen)
    video_idx = torch.tensor([2, 0, 1, 2])
    results = []
    for encode in (encode_video, encode_video_layerwise):
        model.zero_grad()
        vis = visual.clone().requires_grad_(True)
        kept = encode(model, prefix, vis, ratios)
        logits = text_logits(model, kept, text, video_idx)
        (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(([(k.detach(), v.detach()) for k, v in kept], logits.detach(), vis.grad, grads))
    (kept_a, logits_a, vgrad_a, grads_a), (kept_b, logits_b, vgrad_b, grads_b) = results
    close = lambda a, b: (a - b).abs().max() <= 1e-5 * max(a.abs().max(), 1e-3)
    for (ka, va), (kb, vb) in zip(kept_a, kept_b):
        assert ka.shape == kb.shape and close(ka, kb) and close(va, vb)
    assert close(logits_a, logits_b)
    # a video too short for any VST keeps nothing of itself: no gradient reaches its frames in either
    assert (vgrad_a is None) == (vgrad_b is None) == (num_visual < min(ratios))
    assert vgrad_a is None or close(vgrad_a, vgrad_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert close(grads_a[name], grads_b[name]), name
    model.zero_grad()


def test_window_slots_rule_and_refusal():
    is_vst, rem = window_slots(10, 4, 0)
    assert is_vst.int().tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0] and rem == 2
    is_vst, rem = window_slots(6, 4, 2)
    assert is_vst.int().tolist() == [0, 0, 1, 0, 0, 0, 0, 1] and rem == 0
    with pytest.raises(ValueError):
        window_slots(12, 4, 6)          # a remainder the next ratio cannot place


def test_gradients_reach_every_trained_part(demo_like):
    loaded, _ = demo_like
    model = loaded.model
    tok = loaded.tokenizer
    samples = [make_sample("retrieval", 6, [3, i], ARCH.image_size) for i in range(2)]
    batch = make_batch(samples, tok, loaded.image_processor, tok.convert_tokens_to_ids("<|im_end|>"),
                       tok.convert_tokens_to_ids("<|endoftext|>"), [2, 4])
    model.zero_grad()
    torch.nn.functional.cross_entropy(batch_logits(model, batch), batch.targets).backward()
    for name in ("model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight",
                 "model.mm_projector.0.weight", "model.layers.0.self_attn.beacon_q_proj.weight",
                 "model.layers.1.self_attn.beacon_v_proj.bias", "model.beacon_embed_tokens.weight",
                 "model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.zero_grad()


def test_layerwise_option_encodes_only_long_videos_layerwise(demo_like, monkeypatch):
    loaded, _ = demo_like
    tok = loaded.tokenizer
    used = []
    for name in ("encode_video", "encode_video_layerwise"):
        real = getattr(batch_module, name)
        monkeypatch.setattr(batch_module, name, lambda *a, _real=real, _name=name: used.append(_name) or _real(*a))
    window_frames = loaded.config.beacon_window // ARCH.tokens_per_frame
    for frames in (window_frames * (batch_module.LAYERWISE_MIN_WINDOWS - 1),
                   window_frames * batch_module.LAYERWISE_MIN_WINDOWS):
        samples = [make_sample("counting", frames, [12, frames], ARCH.image_size)]
        num_windows = frames // window_frames
        batch = make_batch(samples, tok, loaded.image_processor, tok.convert_tokens_to_ids("<|im_end|>"),
                           tok.convert_tokens_to_ids("<|endoftext|>"), [4] * num_windows)
        with torch.no_grad():
            lw = batch_logits(loaded.model, batch, layerwise=True)
            seq = batch_logits(loaded.model, batch)
        assert (lw - seq).abs().max() <= 1e-4 * seq.abs().max()
    assert used == ["encode_video", "encode_video", "encode_video_layerwise", "encode_video"]


@pytest.mark.parametrize("b,nw,n,m", [(3, 5, 7, 11), (1, 1, 3, 0), (2, 9, 13, 29)])
def test_window_keys_equal_autograd_slice_assignment_bit_for_bit(b, nw, n, m):
    """WindowKeys (one buffer, a hand-written backward) gives the values and the gradients of writing the
    buffer with autograd's in-place slice assignments, exactly: its only purpose is speed."""
    from demo_model.forward import WindowKeys
    gen = torch.Generator().manual_seed(b * 100 + nw * 10 + n)
    nkv, hd = 2, 6
    kept = torch.randn(b, m, nkv, hd, generator=gen)
    qkv = torch.randn(b, nw * n, 3 * nkv * hd, generator=gen)     # own is a strided view, as in the encoder
    weight = torch.randn(b * nw, nkv, m + n, hd, generator=gen)

    def slices(kept_t, own):
        out = kept_t.new_empty(b, nw, m + n, nkv, hd)
        out[:, :, :m] = kept_t[:, None]
        out[:, :, m:] = own.reshape(b, nw, n, nkv, hd)
        return out

    results = []
    for build in (slices, lambda k, o: WindowKeys.apply(k, o, nw)):
        k, x = kept.clone().requires_grad_(True), qkv.clone().requires_grad_(True)
        own = x.split([nkv * hd, nkv * hd, nkv * hd], -1)[1].reshape(b, nw * n, nkv, hd)
        out = build(k, own)
        keys = out.reshape(b * nw, m + n, nkv, hd).transpose(1, 2)       # as the encoder hands them to SDPA
        (keys * weight).sum().backward()
        results.append((out.detach(), k.grad, x.grad))
    (out_a, kgrad_a, xgrad_a), (out_b, kgrad_b, xgrad_b) = results
    assert torch.equal(out_a, out_b) and torch.equal(xgrad_a, xgrad_b) and torch.equal(kgrad_a, kgrad_b)
    # and the kept gradient is the sum over the windows (float64 reference)
    want = (weight.double().transpose(1, 2).reshape(b, nw, m + n, nkv, hd)[:, :, :m]).sum(1)
    assert torch.allclose(kgrad_b.double(), want, atol=1e-5)
