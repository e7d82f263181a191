"""The README's examples run as written: its Python block, then its shell commands, in order."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


# One interpreter runs every example in turn (each Python block in fresh globals, each `mmcl`
# line through the command's own entry point), so torch is imported once, not once a line.
RUNNER = """
import json, shlex, sys
from mmcl.cli import main

python_blocks, commands = json.load(sys.stdin)
for code in python_blocks:
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
for line in commands:
    argv = shlex.split(line.split("#")[0])[1:]
    status = main([*argv, *([] if argv[0] in ("models", "convert") else ["--quiet"])])
    if status:
        sys.exit(f"README line failed with status {status}: {line}")
"""


@pytest.mark.slow
def test_readme_examples_run_as_written(tmp_path):
    python_blocks = blocks("python")
    assert python_blocks, "the README shows the Python API"
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
    result = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps([python_blocks, commands]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "shapes.npy").is_file()
    assert (tmp_path / "tiny-converted-hf" / "config.json").is_file()
