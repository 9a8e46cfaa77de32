"""`pip install .` (not editable) gives a package that runs `vxl demo` from any directory: the demo
checkpoint and everything the installed package needs are in the wheel, and nothing outside it is used."""
from __future__ import annotations

import os
import shutil
import subprocess
import venv

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_installed_package_runs_the_demo_from_another_directory(tmp_path):
    env_dir = tmp_path / "env"
    # the environment's own packages (torch, transformers, ...) stay visible; vxl itself comes from the wheel
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    source = tmp_path / "source"            # a copy, so the build leaves nothing in the checkout
    shutil.copytree(os.path.join(REPO_ROOT, "vxl"), source / "vxl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO_ROOT, name), source)
    build = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([python, "-c", "import vxl, os; print(os.path.dirname(vxl.__file__))"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert where == os.path.join(site, "vxl")
    assert os.path.isfile(os.path.join(where, "data", "demo", "config.json"))
    assert not os.path.exists(os.path.join(site, "demo_model")) and not os.path.exists(os.path.join(site, "bench"))
    demo = subprocess.run([str(env_dir / "bin" / "vxl"), "demo", "--num-frames", "64"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "right answer:" in demo.stdout and "model answer:" in demo.stdout
