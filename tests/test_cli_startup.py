"""`mmcl --help`, `--version` and argument errors answer without loading torch (which takes
seconds): the parser imports nothing heavy, and the commands import what they need."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "numpy", "huggingface_hub", "transformers", "safetensors")
PROBE = """
import sys
from mmcl.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    print("exit", exit.code, file=sys.stderr)
print(sorted({m.split(".")[0] for m in sys.modules} & set(%r)))
"""


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,), *argv], capture_output=True, text=True
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["embed", "--help"],
        ["caption", "--help"],
        ["capfilt", "--help"],
        ["ask", "--help"],
        ["index", "--help"],
        ["index", "--kind", "lsh"],
        ["serve", "--help"],
        ["continual", "--help"],
        ["embed", "--no-such-flag"],
        ["zeroshot", "--precision", "fp64"],
    ],
    ids=" ".join,
)
def test_help_version_and_argument_errors_load_nothing_heavy(argv):
    result = run_cli(*argv)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout  # none of HEAVY imported
    assert ("exit 0" if argv[-1] in ("--help", "--version") else "exit 2") in result.stderr


def test_version_is_the_packages():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    version = re.search(r'^version = "(.+)"$', pyproject, flags=re.M).group(1)
    assert run_cli("--version").stdout.splitlines()[0] == f"mmcl {version}"


def test_import_mmcl_is_light_and_every_public_name_loads_on_use():
    code = (
        "import sys, mmcl\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
        "assert set(mmcl.__all__) == set(mmcl._PUBLIC) == set(dir(mmcl)) & set(mmcl._PUBLIC)\n"
        "print(all(callable(getattr(mmcl, name)) for name in mmcl.__all__))\n"
        "print(mmcl.models.available_models is mmcl.available_models)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split("\n")[:3] == ["[]", "True", "True"], result.stderr


def test_a_reader_that_goes_away_stops_the_listing_quietly():
    # `mmcl models | head -1`: the pipe closes after one line; no BrokenPipeError traceback.
    listing = subprocess.Popen(
        [sys.executable, "-m", "mmcl.cli", "models"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    listing.stdout.close()  # the reader goes away before anything is written
    _, errors = listing.communicate(timeout=120)
    assert b"Traceback" not in errors and b"BrokenPipe" not in errors, errors.decode()
