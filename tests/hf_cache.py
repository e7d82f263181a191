"""A Hugging Face cache in a test's folder, laid out as `huggingface_hub` lays it out:

    <HF_HOME>/hub/models--ORG--NAME/blobs/<hash>
    <HF_HOME>/hub/models--ORG--NAME/refs/main                     (the commit hash)
    <HF_HOME>/hub/models--ORG--NAME/snapshots/<commit>/<file> -> ../../blobs/<hash>

Tests fill it and run with HF_HUB_OFFLINE=1: nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def use_hf_home(monkeypatch, home: Path) -> Path:
    """HF_HOME=home and HF_HUB_OFFLINE=1 for this process and its children; the cache folder.

    `huggingface_hub` reads its environment once, when first imported, so this process (which
    has imported it already) is given the values a new process would read from these
    variables. Child processes read the variables themselves.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return home / "hub"


def put_in_hf_cache(
    cache: Path, repo: str, files: dict[str, bytes | Path], commit: str = COMMIT
) -> Path:
    """Store `files` (name -> content, or a file to copy) as revision `commit` of `repo`, which
    becomes its main branch; returns the snapshot folder."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    for name, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return snapshot
