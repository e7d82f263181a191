"""Building mmcl's C++ kernels: once per machine and PyTorch version, only when asked.

`load_library(timeout)` is called by `mmcl.nn.accelerate`, never inside a forward pass. The
compiler runs in a child process (`torch.utils.cpp_extension.load` there), so a build that
hangs (a compiler that never returns, a lock left by a killed build) is killed after `timeout`
seconds; the library it leaves in PyTorch's extension folder (``TORCH_EXTENSIONS_DIR``) is then
loaded here. The library's name carries a hash of the sources, flags and PyTorch version, so
a library already built is loaded directly, without the child and without any lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
# One library holds every kernel: one build, one warning if it fails.
SOURCES = (
    HERE / "short_attention_amx.cpp",
    HERE / "linear_amx.cpp",
    HERE / "decode_attention.cpp",
)
HEADERS = (HERE / "amx_common.h",)
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512bf16"]
CFLAGS += ["-mamx-tile", "-mamx-bf16", "-fopenmp"]  # kernels split work over OpenMP threads
LDFLAGS = ["-fopenmp"]
DEFAULT_TIMEOUT_S = 600.0  # a first build is quick on a large machine, minutes on 2 cores

# Run in the child: PyTorch's own builder (ninja, its lock, its flags), then print the path.
_CHILD = """
import json, sys
from torch.utils import cpp_extension
args = json.loads(sys.argv[1])
print(cpp_extension.load(is_python_module=False, verbose=False, **args))
"""


class BuildError(RuntimeError):
    """The kernels could not be built or loaded; the message says why in one line."""


def library_name() -> str:
    """``mmcl_kernels_<hash>``: changes with the sources, headers, flags or PyTorch version."""
    digest = hashlib.sha256(torch.__version__.encode())
    for part in (*SOURCES, *HEADERS):
        digest.update(part.read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    return f"mmcl_kernels_{digest.hexdigest()[:16]}"


def build_directory(name: str) -> Path:
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "no CUDA runtime found" is irrelevant to a CPU kernel
    try:
        from torch.utils import cpp_extension
    finally:
        quiet.setLevel(level)
    return Path(cpp_extension._get_build_directory(name, verbose=False))


def timeout_from_environment() -> float:
    value = os.environ.get("MMCL_KERNEL_BUILD_TIMEOUT", "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(
            f"MMCL_KERNEL_BUILD_TIMEOUT must be a number of seconds, got {value!r}"
        ) from None


def load_library(timeout: float) -> None:
    """Load the kernels' library into this process, building it first if needed."""
    name = library_name()
    folder = build_directory(name)
    library = folder / f"{name}.so"
    if not library.exists():
        _refuse_stale_lock(folder / "lock", timeout)
        _build(name, library, timeout)
    try:
        torch.ops.load_library(str(library))
    except Exception as error:  # e.g. a library cut short by a killed linker
        raise BuildError(f"{library} could not be loaded ({error}); delete it to rebuild") from None


def lock_blocks_while_it_exists() -> bool:
    """Whether this PyTorch's builder waits for as long as its lock *file* exists (a
    `FileBaton`, before PyTorch 2.9 or so): a build killed half-way leaves that file, and every
    later build waits on it for ever. Newer PyTorch holds an OS lock the kernel releases."""
    from torch.utils import cpp_extension

    return not hasattr(cpp_extension, "FileLock")


def _refuse_stale_lock(lock: Path, timeout: float) -> None:
    if not (lock.exists() and lock_blocks_while_it_exists()):
        return
    age = time.time() - lock.stat().st_mtime
    if age > timeout:  # no build takes this long: one was killed and left its lock
        raise BuildError(
            f"a stale lock file from a build killed half-way, {age:.0f} s old, blocks the "
            f"build: delete {lock}"
        )


def _build(name: str, library: Path, timeout: float) -> None:
    args = {
        "name": name,
        "sources": [str(source) for source in SOURCES],
        "extra_cflags": CFLAGS,
        "extra_ldflags": LDFLAGS,
    }
    # A session of its own, so that on a timeout the compilers it started are killed too.
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()  # reaps it and closes the pipe
        lock = library.parent / "lock"
        held = (
            f"; a lock file is there ({lock}): if no other build runs, delete it"
            if lock.exists()
            else ""
        )
        raise BuildError(f"the build took more than {timeout:g} s and was stopped{held}") from None
    if child.returncode != 0 or not library.exists():
        lines = [line for line in output.strip().splitlines() if line.strip()]
        raise BuildError(lines[-1] if lines else f"the build exited with {child.returncode}")
