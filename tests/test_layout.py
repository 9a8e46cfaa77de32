"""The package's shape: its import contracts (.importlinter) hold and catch a planted back-edge, and every
command the READMEs document answers `--help` (so the docs and the code agree)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ("README.md", "bench/README.md", "demo_model/README.md", "docs/serving.md", "docs/lmms_eval.md",
        "docs/architecture.md")


def lint_imports(root: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": root}
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; "
                           "sys.exit(c())"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    done = lint_imports(REPO_ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize("module,planted,broken", [
    ("vxl/kernels/reference.py", "import vxl.engine.llm", "kernels <- model <- engine"),
    ("vxl/model/loader.py", "from vxl.engine import preprocess", "kernels <- model <- engine"),
    ("vxl/engine/runner.py", "import vxl.cli", "kernels <- model <- engine"),
    ("vxl/engine/llm.py", "import demo_model.loop", "imports nothing from bench/ or demo_model/"),
    ("vxl/cli.py", "import bench.e2e", "imports nothing from bench/ or demo_model/"),
])
def test_a_planted_back_edge_breaks_a_contract(tmp_path, module, planted, broken):
    for name in ("vxl", "bench", "demo_model"):
        shutil.copytree(os.path.join(REPO_ROOT, name), tmp_path / name,
                        ignore=shutil.ignore_patterns("results", "data", "__pycache__"))
    shutil.copy(os.path.join(REPO_ROOT, ".importlinter"), tmp_path)
    assert lint_imports(str(tmp_path)).returncode == 0          # the copy alone keeps every contract
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{planted}\n")
    done = lint_imports(str(tmp_path))
    assert done.returncode != 0 and "BROKEN" in done.stdout
    assert re.search(re.escape(broken) + r".*BROKEN", done.stdout), done.stdout


def documented_commands() -> list[list[str]]:
    """Every `python -m MODULE` and `vxl SUBCOMMAND` the READMEs give as code, once each."""
    found = []
    for doc in DOCS:
        with open(os.path.join(REPO_ROOT, doc)) as f:
            prose = f.read()
        blocks = re.findall(r"^```\w*\n(.*?)^```", prose, re.M | re.S)
        text = "\n".join(blocks + re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", prose, flags=re.M | re.S)))
        found += [[sys.executable, "-m", m] for m in re.findall(r"python -m ((?:vxl|bench|demo_model)[\w.]*)", text)]
        found += [[sys.executable, "-m", "vxl.cli", sub] for sub in re.findall(r"^vxl (\w+)", text, re.M)]
    unique = []
    for cmd in found:
        if cmd not in unique:
            unique.append(cmd)
    return unique


def test_the_docs_name_the_entry_points():
    names = {" ".join(c[2:]) for c in documented_commands()}
    assert {"vxl.cli generate", "vxl.cli demo", "vxl.cli plan", "bench.e2e", "bench.niah", "bench.decode",
            "bench.bench_kernels", "demo_model", "demo_model.recipe", "demo_model.rerun", "demo_model.evaluate",
            "demo_model.backends"} <= names, names


@pytest.mark.parametrize("command", documented_commands(), ids=lambda c: " ".join(c[2:]))
def test_documented_command_answers_help(command):
    done = subprocess.run([*command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
