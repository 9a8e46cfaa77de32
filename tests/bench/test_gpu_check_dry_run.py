"""Dry run of bench/gpu_check.sh on CPU: every Python entry point it calls exists and accepts the exact arguments it
is given, and its pytest selection collects tests, so a GPU minute is never lost to a typo."""
import importlib
import os
import re
import shlex
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, "bench", "gpu_check.sh")


def python_commands() -> list[list[str]]:
    """The `python ...` commands of gpu_check.sh (continuation lines joined, pipes and redirections cut off)."""
    with open(SCRIPT) as f:
        text = f.read().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.lstrip().startswith("#") or "python " not in line:
            continue
        words = shlex.split(line.split("|")[0].replace("2>&1", ""))
        words = words[words.index("python") + 1:]
        commands.append([w for w in words if w != "$quick"] + (["--quick"] if "$quick" in words else []))
    return commands


def test_every_entry_point_accepts_its_arguments():
    commands = python_commands()
    modules = [c[1] for c in commands if c[0] == "-m"]
    assert {"pytest", "bench.kernels_static", "bench.bench_kernels", "bench.e2e"} <= set(modules)
    for cmd in commands:
        if cmd[0] == "-c":
            compile(cmd[1], "gpu_check.sh", "exec")
            continue
        if cmd[1] == "pytest":
            continue
        module, args = importlib.import_module(cmd[1]), cmd[2:]
        if hasattr(module, "build_parser"):
            module.build_parser().parse_args(args)
        elif hasattr(module, "parse_args"):
            module.parse_args(args)
        else:   # a main() that reads sys.argv: every flag must be one it declares
            with open(module.__file__) as f:
                source = f.read()
            for flag in (a for a in args if a.startswith("--")):
                assert re.search(rf"add_argument\(\s*[\"']{flag}[\"']", source), f"{cmd[1]}: unknown flag {flag}"


def test_pytest_selection_collects_tests():
    cmd = next(c for c in python_commands() if c[:2] == ["-m", "pytest"])
    args = [a for a in cmd[2:] if a != "-q"]
    for path in (a for a in args if a.startswith("tests/")):
        assert os.path.exists(os.path.join(REPO_ROOT, path)), path
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"(\d+)/\d+ tests collected|(\d+) tests? collected", proc.stdout), proc.stdout[-2000:]
