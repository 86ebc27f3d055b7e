"""The set-up the README promises: what `make setup` installs, and from where."""

import shutil
import subprocess
from pathlib import Path

import pytest


def test_make_setup_installs_torch_from_the_index_named_by_torch_index():
    """`make setup TORCH_INDEX=URL` installs torch alone from URL (PyTorch's CPU wheels, say); without it, pip's
    configured index chooses, as the README says (dry runs: nothing is installed)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    root = Path(__file__).resolve().parent.parent

    def torch_line(*args):
        out = subprocess.run(
            ["make", "-n", "-B", ".venv/.installed", *args], cwd=root, capture_output=True, text=True
        )
        return next(line for line in out.stdout.splitlines() if "torch==" in line)

    assert torch_line("TORCH_INDEX=https://example.invalid/cpu").endswith(
        "torch==2.13.0 --index-url https://example.invalid/cpu"
    )
    assert torch_line().rstrip().endswith("torch==2.13.0")
    assert "make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu" in (root / "README.md").read_text()
