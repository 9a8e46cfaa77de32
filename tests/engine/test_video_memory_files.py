"""Saved video-memory files are validated: a header that disagrees with its tensors, a field of the wrong
type, NaN K/V, or tensors that do not fit the engine (layers, KV heads, head dim) are refused naming the
file and the field, even when the crafter recomputed the checksum. A good file still round-trips."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from helpers import small_config, write_checkpoint
from vxl import IMAGE_TOKEN_INDEX, LLM, SamplingParams
from vxl.engine.video_memory import VideoMemory, _checksum

PARAMS = SamplingParams(max_tokens=5, ignore_eos=True)
PREFIX = [5, 9, 11]
QUESTION = [12, 13, 14, 15]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(engine, path of a good memory file, the answer it gives)."""
    path = tmp_path_factory.mktemp("vm")
    write_checkpoint(path / "ckpt", small_config(), seed=23)       # 2 layers, 2 KV heads, head_dim 8
    llm = LLM(str(path / "ckpt"), device="cpu", dtype="float32", page_size=4)
    embeds = torch.randn(41, 48, generator=torch.Generator().manual_seed(4))
    mem = llm.encode_video(visual_embeds=embeds, compression_ratio=8, prefix_token_ids=PREFIX)
    answer = llm.generate([request(mem)], PARAMS, use_tqdm=False)[0].token_ids
    mem.save(str(path / "good.safetensors"))
    mem.release()
    return llm, path / "good.safetensors", answer


def request(mem):
    return {"prompt_token_ids": PREFIX + [IMAGE_TOKEN_INDEX] + QUESTION, "video_memory": mem}


def craft(good, dst, edit_header=None, edit_tensors=None):
    """A copy of `good` with its header and/or tensors edited and the checksum recomputed (as a tamperer
    would)."""
    with safe_open(str(good), framework="pt") as f:
        header = json.loads(f.metadata()["vxl"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    header["checksum"] = _checksum(tensors)
    if edit_header:
        edit_header(header)
    save_file(tensors, str(dst), metadata={"vxl": json.dumps(header)})
    return str(dst)


def assert_all_free(llm):
    usage = llm.kv_cache_usage()
    assert usage["num_free_pages"] == usage["num_pages"]
    llm.block_manager.check()


def test_good_file_round_trips(saved, tmp_path):
    llm, good, answer = saved
    copy = craft(good, tmp_path / "copy.safetensors")            # re-saving changes nothing
    for path in (str(good), copy):
        mem = VideoMemory.load(path)
        out = llm.generate([request(mem)], PARAMS, use_tqdm=False)[0]
        assert out.error is None and out.token_ids == answer
        mem.release()
    assert_all_free(llm)


def drop_layer(t):
    del t["k.1"], t["v.1"]


def fewer_heads(t):
    for k in t:
        t[k] = t[k][:, :1].contiguous()


def shorter_head_dim(t):
    for k in t:
        t[k] = t[k][:, :, :4].contiguous()


@pytest.mark.parametrize("edit,field", [(drop_layer, "num_layers"), (fewer_heads, "num_kv_heads"),
                                        (shorter_head_dim, "head_dim")])
def test_tensors_that_do_not_fit_the_engine_fail_alone(saved, tmp_path, edit, field):
    llm, good, answer = saved
    path = craft(good, tmp_path / "bad.safetensors", edit_tensors=edit)
    mem = VideoMemory.load(path)                 # self-consistent: only the engine can tell
    with pytest.raises(ValueError, match=field):
        mem.bind(llm.kv_cache, llm.model_fingerprint)
    fresh = VideoMemory.load(str(good))
    outs = llm.generate([request(VideoMemory.load(path)), request(fresh)], PARAMS, use_tqdm=False)
    assert outs[0].finish_reason == "error" and field in outs[0].error and path in outs[0].error
    assert outs[1].error is None and outs[1].token_ids == answer
    fresh.release()
    assert_all_free(llm)


def set_field(name, value):
    return lambda h: h.__setitem__(name, value)


@pytest.mark.parametrize("edit_header,field", [
    (set_field("num_kept", 7), "num_kept"), (set_field("num_kept", 10**9), "num_kept"),
    (set_field("num_vst", 4), "num_vst"), (set_field("num_visual_tokens", 80), "num_vst"),
    (set_field("ratio", "8"), "ratio"), (set_field("ratio", True), "ratio"), (set_field("ratio", 0), "ratio"),
    (set_field("num_frames", 1.5), "num_frames"), (set_field("num_kept", None), "num_kept"),
    (set_field("model", 3), "model"), (set_field("checksum", None), "checksum"), (set_field("format", 1), "format"),
    (set_field("prefix_token_ids", "abc"), "prefix_token_ids"),
    (set_field("prefix_token_ids", [5, 9.5, 11]), "prefix_token_ids"),
    (lambda h: h.pop("num_vst"), "num_vst"),
])
def test_bad_header_is_refused_naming_file_and_field(saved, tmp_path, edit_header, field):
    _, good, _ = saved
    path = craft(good, tmp_path / "bad.safetensors", edit_header=edit_header)
    with pytest.raises(ValueError, match=field) as info:
        VideoMemory.load(path)
    assert path in str(info.value)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_kv_is_refused(saved, tmp_path, value):
    _, good, _ = saved
    path = craft(good, tmp_path / "nan.safetensors", edit_tensors=lambda t: t["v.1"].view(-1)[3].fill_(value))
    with pytest.raises(ValueError, match=r"'v\.1' has NaN or infinite") as info:
        VideoMemory.load(path)
    assert path in str(info.value)


@pytest.mark.parametrize("edit", [
    lambda t: t.pop("k.0"),                                         # a layer's K without its V
    lambda t: t.__setitem__("k.1", t["k.1"][:-1].contiguous()),     # layers of different lengths
    lambda t: t.__setitem__("v.0", t["v.0"].to(torch.int32)),       # not floats
    lambda t: t.__setitem__("k.2", t["k.0"].clone()),               # an unpaired extra tensor
])
def test_malformed_tensors_are_refused(saved, tmp_path, edit):
    _, good, _ = saved
    path = craft(good, tmp_path / "bad.safetensors", edit_tensors=edit)
    with pytest.raises(ValueError) as info:
        VideoMemory.load(path)
    assert path in str(info.value) and ("num_layers" in str(info.value) or "k.0" in str(info.value))


def test_unreadable_files_name_the_path(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01not a safetensors file" * 10)
    for path in (str(junk), str(tmp_path / "missing.safetensors")):
        with pytest.raises(ValueError) as info:
            VideoMemory.load(path)
        assert path in str(info.value)
    no_header = tmp_path / "plain.safetensors"
    save_file({"k.0": torch.zeros(1, 1, 1)}, str(no_header))
    with pytest.raises(ValueError, match="not a vxl video memory"):
        VideoMemory.load(str(no_header))
