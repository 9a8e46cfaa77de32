"""No code from a checkpoint ever runs: an `auto_map` naming a Python file of the checkpoint is refused
(tokenizer_config.json) or never looked at (config.json), even with `yes` answering on stdin."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vxl.model.loader import load_checkpoint
from vxl.model.tiny import build_tiny, save_checkpoint

CPU = torch.device("cpu")
# what a hostile checkpoint ships: importing it leaves a marker file behind
EVIL_CODE = """
open({marker!r}, "w").write("checkpoint code ran")
from transformers import PreTrainedTokenizerFast, PretrainedConfig
class EvilTokenizer(PreTrainedTokenizerFast):
    pass
class EvilConfig(PretrainedConfig):
    model_type = "evil"
"""
LOAD_SCRIPT = """
import sys, torch
from vxl.model.loader import load_checkpoint
try:
    loaded = load_checkpoint(sys.argv[1], torch.device("cpu"), torch.float32)
except ValueError as exc:
    print("REFUSED", exc)
    sys.exit(3)
print("LOADED", type(loaded.tokenizer).__name__)
"""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_ckpt")
    save_checkpoint(build_tiny(CPU, torch.float32), str(path))
    return path


def hostile_copy(src, dst, file_name: str, auto_map: dict):
    """A copy of checkpoint `src` whose `file_name` (a JSON file) gains `auto_map`, with evil.py beside it."""
    import shutil
    shutil.copytree(src, dst)
    marker = dst / "MARKER"
    (dst / "evil.py").write_text(EVIL_CODE.format(marker=str(marker)))
    data = json.loads((dst / file_name).read_text())
    data["auto_map"] = auto_map
    (dst / file_name).write_text(json.dumps(data))
    return marker


def load_with_yes_on_stdin(path) -> subprocess.CompletedProcess:
    """Load the checkpoint in a fresh process whose stdin answers "y" to any question; the timeout only
    guards against a hang on a prompt."""
    return subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(path)], input="y\n" * 10000,
                          capture_output=True, text=True, timeout=300, cwd=str(path))


def test_tokenizer_auto_map_is_refused_and_runs_nothing(tiny_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    marker = hostile_copy(tiny_dir, ckpt, "tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", None]})
    with pytest.raises(ValueError, match="auto_map") as info:
        load_checkpoint(str(ckpt), CPU, torch.float32)
    assert "tokenizer_config.json" in str(info.value)
    proc = load_with_yes_on_stdin(ckpt)
    assert proc.returncode == 3 and "REFUSED" in proc.stdout and "auto_map" in proc.stdout, proc.stderr[-2000:]
    assert not marker.exists()


def test_config_auto_map_is_never_imported(tiny_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    marker = hostile_copy(tiny_dir, ckpt, "config.json", {"AutoConfig": "evil.EvilConfig",
                                                          "AutoModelForCausalLM": "evil.EvilModel"})
    proc = load_with_yes_on_stdin(ckpt)
    assert proc.returncode == 0 and "LOADED" in proc.stdout, proc.stderr[-2000:]
    assert not marker.exists()


def test_transformers_itself_is_told_not_to_run_code(tiny_dir, tmp_path, monkeypatch):
    """Defence in depth: with vxl's own refusal switched off, transformers still imports nothing (it is
    called with trust_remote_code=False), and it does not wait on stdin."""
    import vxl.model.loader as loader
    ckpt = tmp_path / "ckpt"
    marker = hostile_copy(tiny_dir, ckpt, "tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTokenizer", None]})
    monkeypatch.setattr(loader, "refuse_remote_code", lambda path: None)
    monkeypatch.setattr(sys, "stdin", None)       # a prompt would fail at once instead of hanging
    try:
        tokenizer = loader.load_tokenizer(str(ckpt))
    except ValueError:                            # transformers refuses: as good as vxl's own refusal
        tokenizer = None
    assert type(tokenizer).__name__ != "EvilTokenizer"
    assert not marker.exists()
