"""The README's examples run as written: its Python block, then its shell commands, in order."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path):
    python_blocks = blocks("python")
    assert python_blocks, "the README shows the Python API"
    for code in python_blocks:
        subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    commands = [
        line for block in blocks("bash") for line in block.splitlines() if line.startswith("mmcl ")
    ]
    assert {line.split()[1] for line in commands} >= {
        "models",
        "embed",
        "zeroshot",
        "retrieval",
        "convert",
        "train",
    }
    mmcl = Path(sys.executable).with_name("mmcl")
    for line in commands:
        argv = shlex.split(line.split("#")[0])
        result = subprocess.run(
            [str(mmcl), *argv[1:], *([] if argv[1] in ("models", "convert") else ["--quiet"])],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        assert result.returncode == 0, f"{line}\n{result.stderr}"
    assert (tmp_path / "shapes.npy").is_file()
    assert (tmp_path / "tiny-converted-hf" / "config.json").is_file()
