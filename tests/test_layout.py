"""The package's shape: its import contracts (.importlinter) hold and catch a planted back-edge, and every
command the READMEs document answers `--help` (so the docs and the code agree; run in this process, one also
as a process of its own)."""
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


def answer_help_in_process(command: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`python -m MODULE ARGS --help` run in this process (runpy executes MODULE as __main__, as `-m` does,
    with sys.argv, the directory and sys.path as the command would have them): exit status, stdout, stderr."""
    import runpy
    import warnings
    module, args = command[2], command[3:]
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", [module, *args, "--help"])
    monkeypatch.setattr(sys, "path", list(sys.path))        # an entry point may add to it (bench_kernels does)
    capsys.readouterr()
    code = 0
    with warnings.catch_warnings():    # runpy notes that MODULE is already imported (by an earlier case)
        warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", documented_commands(), ids=lambda c: " ".join(c[2:]))
def test_documented_command_answers_help(command, monkeypatch, capsys):
    code, out, err = answer_help_in_process(command, monkeypatch, capsys)
    assert code == 0, err[-2000:]
    assert "usage:" in out


def test_a_documented_command_answers_help_in_a_fresh_process():
    """One command as a user runs it, a process of its own: the entry point that changes sys.path and imports
    triton when imported."""
    command = next(c for c in documented_commands() if c[2:] == ["bench.bench_kernels"])
    done = subprocess.run([*command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


# -- the engine core's seams: front ends use its methods, nothing in vxl/ calls another object's privates --
FRONT_ENDS = ("vxl/server", "vxl/batch", "vxl/integrations")
ENGINE_INTERNALS = ("vxl.engine.scheduler", "vxl.engine.sequence", "vxl.engine.runner", "vxl.engine.kv_cache",
                    "vxl.engine.vision_stage", "vxl.engine.visual", "vxl.engine.staging", "vxl.engine.cuda_graphs")
# EngineCore's interface to the front ends (vxl/engine/core.py)
CORE_METHODS = {"add_request", "add", "encode", "abort", "abort_handle", "step", "run_until", "has_unfinished_requests",
                "add_listener", "remove_listener", "on_pressure", "kv_cache_usage", "load", "lock"}
# third-party private API vxl calls knowingly: Triton's argument packing, used to compile without a GPU
THIRD_PARTY_PRIVATE = {"_pack_args"}


def python_files(*roots: str):
    import ast
    for root in roots:
        for dirpath, _, names in os.walk(os.path.join(REPO_ROOT, root)):
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    with open(path) as f:
                        yield os.path.relpath(path, REPO_ROOT), ast.parse(f.read())


def seam_violations(files) -> list[str]:
    """Imports of engine internals and uses of the core other than its methods, in front-end files."""
    import ast
    found = []
    for path, tree in files:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                found += [f"{path}:{node.lineno} imports {n}" for n in names if n.startswith(ENGINE_INTERNALS)]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                    node.value.attr == "core" and node.attr not in CORE_METHODS:
                found.append(f"{path}:{node.lineno} uses {ast.unparse(node)}")
    return found


def private_calls(files) -> list[str]:
    """`x._name` where x is not self, cls or super(): another object's private attribute. Module-level
    Triton kernels (`module._name_kernel`, the kernel naming convention) are module attributes, not an
    object's privates."""
    import ast
    found = []
    for path, tree in files:
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if isinstance(base, ast.Call) and isinstance(base.func, ast.Name) and base.func.id == "super":
                continue
            if node.attr.endswith("_kernel") or node.attr in THIRD_PARTY_PRIVATE:
                continue
            found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
    return found


def test_front_ends_reach_the_engine_core_only_through_its_methods():
    assert seam_violations(python_files(*FRONT_ENDS)) == []


def test_nothing_in_vxl_calls_another_objects_private_methods():
    assert private_calls(python_files("vxl")) == []


def test_the_seam_checks_catch_a_planted_breach():
    import ast
    planted = ast.parse("from vxl.engine.scheduler import Scheduler\n"
                        "def f(engine, stream):\n"
                        "    engine.llm.core.scheduler.on_pressure = None\n"
                        "    stream._pop_window()\n")
    assert len(seam_violations([("planted.py", planted)])) == 2
    assert private_calls([("planted.py", planted)]) == ["planted.py:4 stream._pop_window"]
