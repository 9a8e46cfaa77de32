"""Property tests over the Python API (issue 31, item 8) on an LLM-only checkpoint: request dicts, sampling
params and saved video-memory files drawn from strategies mixing valid and invalid values of every field, each batch
with fixed good requests in one `LLM.generate` call. Properties: `generate` never raises for a request's
problem; a bad request ends with finish_reason "error" and a message naming its field; good requests get
their solo (greedy) answers; the pool's invariants hold and every page is free afterwards; the engine
answers the next call. Bounded by default; VXL_FUZZ_EXAMPLES=N runs N examples per property."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from fuzz_common import ANY, GREEDY, OK, PH, RATIOS, combine, fuzz_settings, run_batch, with_solos
from helpers import small_config, write_checkpoint
from vxl import LLM, SamplingParams
from vxl.engine.video_memory import VideoMemory, _checksum


# -- engines and the good requests batched with every example -----------------------------------------
@pytest.fixture(scope="module")
def ckpt_llm(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    write_checkpoint(path, small_config(), seed=31)
    return LLM(str(path), device="cpu", dtype="float32", page_size=4, num_pages=512, max_batch_tokens=64)


def good_embeds_request(seed: int, num_visual: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 97, (7,), generator=gen).tolist()
    embeds = torch.randn(num_visual or 30 + seed % 20, 48, generator=gen)
    return {"prompt_token_ids": ids[:3] + [PH] + ids[3:], "visual_embeds": embeds, "compression_ratio": 4,
            "request_id": f"good{seed}"}


@pytest.fixture(scope="module")
def ckpt_goods(ckpt_llm):
    return with_solos(ckpt_llm, [good_embeds_request(1), good_embeds_request(2, num_visual=53)])


# -- strategies: (value, expectation) pairs; an expectation lists words one of which the error holds ----
def bad_ids():
    ok = st.lists(st.integers(2, 96), min_size=1, max_size=5)
    junk = st.one_of(st.floats(allow_nan=True), st.text(max_size=3), st.booleans(), st.none(),
                     st.integers(97, 2**80), st.integers(max_value=-1).filter(lambda t: t != PH))
    with_junk = st.tuples(ok, junk, ok).map(lambda t: (t[0] + [t[1], PH] + t[2], ("prompt_token_ids", "vocabulary")))
    return st.one_of(
        with_junk,
        st.tuples(ok, ok).map(lambda t: (t[0] + [PH, PH] + t[1], ("placeholder",))),
        ok.map(lambda a: (a + [PH], ("after the video",))),
        ok.map(lambda a: (a, ("placeholder",))),
        st.just(([], ("empty", "placeholder"))),
        st.sampled_from([("3 4 -200 5", ("prompt_token_ids",)), ({"a": 1}, ("prompt_token_ids",)),
                         (np.array([3, PH, 5]), ("prompt_token_ids",)),
                         (torch.tensor([3.0, PH, 5.0]), ("prompt_token_ids",)),
                         (torch.tensor([[3, PH, 5]]), ("prompt_token_ids",)),
                         (torch.tensor([3, 4, PH, 5]), OK), ((3, PH, 5), OK)]))


def embeds_values():
    n = st.integers(1, 60)
    good = st.tuples(n, st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
                     st.sampled_from([1e-3, 1.0, 50.0])).map(
        lambda t: (torch.randn(max(t[0], 16), 48, dtype=torch.float64).mul(t[2]).to(t[1]), OK))
    bad_shape = st.sampled_from([(10, 47), (10, 49), (0, 48), (48,), (1, 10, 48), (10, 48, 1)]).map(
        lambda s: (torch.randn(s), ("visual_embeds",)))
    bad_dtype = st.sampled_from([torch.int64, torch.uint8, torch.bool, torch.complex64]).map(
        lambda d: (torch.ones(10, 48, dtype=d), ("visual_embeds",)))
    non_finite = st.tuples(n, st.sampled_from([float("nan"), float("inf"), -float("inf")])).map(
        lambda t: (torch.randn(t[0], 48).index_fill(0, torch.tensor([t[0] // 2]), t[1]), ("visual_embeds",)))
    others = st.sampled_from([(np.ones((10, 48), np.float32), ("visual_embeds",)), ([[0.0] * 48] * 10, ("visual_embeds",)),
                              ("embeds.pt", ("visual_embeds",)), (torch.full((30, 48), 1e30), ANY)])
    return st.one_of(good, bad_shape, bad_dtype, non_finite, others)


@st.composite
def ckpt_request(draw):
    """One field of a good embeds request replaced by a drawn value (and its expectation)."""
    req = good_embeds_request(draw(st.integers(100, 10**6)), num_visual=draw(st.integers(8, 60)))
    req["compression_ratio"] = 2
    field = draw(st.sampled_from(["prompt_token_ids", "visual_embeds", "compression_ratio", "num_frames",
                                  "unknown", "prompt", "source", "request_id", "not_a_dict"]))
    if field == "prompt_token_ids":
        req[field], expect = draw(bad_ids())
    elif field == "visual_embeds":
        req[field], expect = draw(embeds_values())
    elif field == "compression_ratio":
        req[field], expect = draw(RATIOS)
    elif field == "num_frames":
        req[field], expect = draw(st.one_of(st.integers(), st.none(), st.text(max_size=2))), ("num_frames",)
        expect = OK if req[field] is None else expect
    elif field == "unknown":
        key = draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in req and k not in ("prompt", "video",
                   "image", "images", "video_memory", "video_stream", "num_frames")))
        req[key], expect = draw(st.integers()), ("unknown",)
    elif field == "prompt":
        req["prompt"], expect = draw(st.text(max_size=10)), ("prompt",)
    elif field == "source":
        name = draw(st.sampled_from(["video", "image", "images", "video_memory", "video_stream"]))
        req[name] = draw(st.sampled_from(["/nonexistent.mp4", np.zeros((2, 8, 8, 3), np.uint8), None]))
        expect = OK if req[name] is None else ("vision tower", "one of", "video_memory", "video_stream", "no video")
        if name == "video_memory" and req[name] is None:
            del req[name]
    elif field == "request_id":
        req[field], expect = draw(st.one_of(st.integers(), st.text(max_size=5), st.just("good1"))), OK
    else:
        req, expect = draw(st.sampled_from([42, None, b"x", ["a"], 3.5])), ("request must be",)
    return req, expect


PARAM_VALUES = {"max_tokens": st.one_of(st.integers(1, 4), st.integers(max_value=0), st.just(True), st.just(2.0)),
                "temperature": st.one_of(st.sampled_from([0.0, 1e-45, 0.7, 1.0]), st.floats(), st.just(-1.0)),
                "top_p": st.one_of(st.sampled_from([1.0, 0.5]), st.floats()),
                "top_k": st.one_of(st.integers(0, 200), st.integers(max_value=-1), st.just(1.5)),
                "seed": st.one_of(st.none(), st.integers(-(2**64), 2**65)),
                "stop_token_ids": st.one_of(st.none(), st.lists(st.integers(-3, 120), max_size=3), st.just("12")),
                "ignore_eos": st.one_of(st.booleans(), st.integers(0, 2)),
                "logprobs": st.one_of(st.none(), st.integers(0, 10**9), st.integers(max_value=-1))}


@st.composite
def sampling_params(draw):
    """(params object for generate, expectation): a SamplingParams that constructs, else its kwargs dict."""
    kw = draw(st.fixed_dictionaries({}, optional=PARAM_VALUES))
    kw.setdefault("max_tokens", 3)
    try:
        params = SamplingParams(**kw)
    except ValueError as exc:       # refused where it enters, naming the field
        assert any(name in str(exc) for name in kw), (kw, exc)
        return kw, ("sampling params",)
    bad_stop = any(not 0 <= t < 97 for t in params.stop_token_ids or ())
    return params, ("stop_token_ids",) if bad_stop else OK


@given(fuzzed=st.lists(st.tuples(ckpt_request(), sampling_params()), min_size=1, max_size=3),
       positions=st.lists(st.integers(0, 5), min_size=3, max_size=3))
@fuzz_settings()
def test_request_fields_fail_alone(ckpt_llm, ckpt_goods, fuzzed, positions):
    run_batch(ckpt_llm, ckpt_goods, [(r, p, combine(e, pe)) for (r, e), (p, pe) in fuzzed], positions)


@pytest.mark.parametrize("make", [lambda: torch.randn(30, 48, device="meta"), lambda: torch.randn(30, 48).to_sparse()],
                         ids=["meta", "sparse"])
def test_visual_embeds_on_meta_or_sparse_names_the_field(ckpt_llm, make):
    out = ckpt_llm.generate([{**good_embeds_request(3), "visual_embeds": make()}], GREEDY, use_tqdm=False)[0]
    assert out.finish_reason == "error" and "visual_embeds" in out.error, out.error


# -- saved video memories: random bytes, truncated, flipped bytes, tampered headers and tensors -------------
MEMORY_PREFIX, MEMORY_SUFFIX = [5, 6, 7], [8, 9, 10, 11]
HEADER_VALUES = st.one_of(st.integers(-5, 10**6), st.text(max_size=5), st.none(), st.booleans(), st.floats(),
                          st.lists(st.integers(-1, 200), max_size=4), st.just("delete"))


@pytest.fixture(scope="module")
def memory_file(ckpt_llm, tmp_path_factory):
    """A saved video memory and the file's bytes."""
    mem = ckpt_llm.encode_video(visual_embeds=torch.randn(41, 48, generator=torch.Generator().manual_seed(4)),
                                compression_ratio=4, prefix_token_ids=MEMORY_PREFIX)
    path = tmp_path_factory.mktemp("memory") / "good.vxlmem"
    mem.save(str(path))
    mem.release()
    return path, path.read_bytes()


def tamper(src_bytes: bytes, path, spec: tuple) -> bool:
    """Write a tampered copy of a saved memory to `path`; returns whether it must not be answered from."""
    kind, arg = spec
    if kind in ("bytes", "truncate", "flip"):
        data = bytearray(arg if kind == "bytes" else src_bytes[:int(len(src_bytes) * arg)] if kind == "truncate"
                         else src_bytes)
        if kind == "flip":
            for pos, xor in arg:
                data[pos % len(data)] ^= xor
        path.write_bytes(bytes(data))
        return kind != "flip"
    path.write_bytes(src_bytes)
    with safe_open(str(path), framework="pt") as f:
        header, tensors = json.loads(f.metadata()["vxl"]), {k: f.get_tensor(k) for k in f.keys()}
    if kind == "header":
        field, value, recompute = arg
        changed = header.get(field, "delete") != value
        if value == "delete":
            header.pop(field, None)
        else:
            header[field] = value
    else:                          # the tensors, the checksum made to agree
        field, recompute, changed = None, True, True
        layers = len(tensors) // 2
        for name in list(tensors):
            t = tensors[name]
            tensors[name] = {"drop_layer": t, "heads": t[:, :1], "nan": t.index_fill(0, torch.tensor([0]), float("nan")),
                             "fp16": t.half(), "shorter": t[:-1], "longer": torch.cat([t, t[:1]])}[arg].contiguous()
        if arg == "drop_layer":
            del tensors[f"k.{layers - 1}"], tensors[f"v.{layers - 1}"]
    if recompute:
        header["checksum"] = _checksum(tensors)
    save_file(tensors, str(path), metadata={"vxl": json.dumps(header)})
    if kind == "tensors":
        return arg != "fp16"        # a half-precision copy of the same K/V is still this memory
    return changed and (field in ("format", "model", "prefix_token_ids") or field == "checksum" and not recompute)


MEMORY_SPECS = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=300)),
    st.tuples(st.just("truncate"), st.floats(0, 0.999)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4)),
    st.tuples(st.just("header"), st.tuples(st.sampled_from(["format", "model", "ratio", "num_frames", "num_visual_tokens",
                                                            "num_vst", "num_kept", "prefix_token_ids", "checksum",
                                                            "extra"]), HEADER_VALUES, st.booleans())),
    st.tuples(st.just("tensors"), st.sampled_from(["drop_layer", "heads", "nan", "fp16", "shorter", "longer"])))


@given(spec=MEMORY_SPECS, positions=st.lists(st.integers(0, 5), min_size=1, max_size=1))
@fuzz_settings(0.8)
def test_tampered_memory_files_fail_alone(ckpt_llm, ckpt_goods, memory_file, tmp_path_factory, spec, positions):
    src, data = memory_file
    path = src.parent / f"tampered_{abs(hash(repr(spec)))}.vxlmem"
    must_fail = tamper(data, path, spec)
    note(f"spec={spec!r} must_fail={must_fail}")
    try:
        mem = VideoMemory.load(str(path))
    except ValueError as exc:       # refused where it enters, naming the file
        assert str(path) in str(exc), exc
        return
    req = {"prompt_token_ids": MEMORY_PREFIX + [PH] + MEMORY_SUFFIX, "video_memory": mem}
    try:
        run_batch(ckpt_llm, ckpt_goods, [(req, GREEDY, ("video memory", "video_memory") if must_fail else ANY)],
                         positions, free_after=False)
    finally:
        mem.release()
    ckpt_llm.block_manager.check()
    assert ckpt_llm.kv_cache_usage()["num_used_pages"] == 0
