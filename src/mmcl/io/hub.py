"""Files from the Hugging Face Hub, through `huggingface_hub` and its cache only.

Every file comes from `huggingface_hub.hf_hub_download`, so its cache, `HF_HOME` /
`HF_HUB_CACHE` and `HF_HUB_OFFLINE` (read by `huggingface_hub` when it is first imported, as in
every library that uses it) apply as they do in transformers and open_clip. A file that cannot
be had raises `FileNotFoundError` naming the repository, the file, the cache, and the ways to
put the file there.

>>> parse_hub_reference("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K@main")
('laion/CLIP-ViT-B-32-laion2B-s34B-b79K', 'main')
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_reference(text: object) -> bool:
    return isinstance(text, str) and text.startswith(HUB_PREFIX)


def parse_hub_reference(text: str) -> tuple[str, str | None]:
    """`hf-hub:org/name[@revision]` -> (repository, revision or None)."""
    repo, _, revision = text.removeprefix(HUB_PREFIX).partition("@")
    if not _REPO_ID.fullmatch(repo) or (revision == "" and "@" in text):
        raise ValueError(
            f"{text!r}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION, "
            f"e.g. hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
        )
    return repo, revision or None


def cache_folder() -> Path:
    """Where `huggingface_hub` keeps its files ($HF_HUB_CACHE, by default $HF_HOME/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_file(repo: str, filename: str, revision: str | None = None) -> Path | None:
    """The file's path in the cache, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None


def hub_file(repo: str, filename: str, revision: str | None = None, what: str = "") -> Path:
    """The local path of `filename` of `repo`: from the cache, or downloaded into it.

    `what` says what the file is for (e.g. "pretrained='openai' of ViT-B-32"); errors start
    with it. A file that is not there raises `HubFileAbsent` (a `FileNotFoundError`).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{what}: " if what else ""
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except LocalEntryNotFoundError:  # not cached, and offline or out of reach
        message = where + missing_files(repo, [filename], revision)
        raise HubFileAbsent(message, unreachable=True) from None
    except EntryNotFoundError:  # the Hub answered: no such file
        message = f"{where}{repo} has no file {filename} on the Hub"
        raise HubFileAbsent(message, unreachable=False) from None
    except GatedRepoError:
        raise FileNotFoundError(
            f"{where}{repo} is gated: accept its terms on huggingface.co, then log in with "
            f"`hf auth login` (or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{where}no repository {repo} on the Hugging Face Hub (or it is private: log in "
            f"with `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{where}{repo} has no revision {revision!r}") from None
    except HFValidationError as error:
        raise ValueError(f"{where}{repo!r} is not a repository id: {error}") from None


def missing_files(repo: str, filenames: Sequence[str], revision: str | None = None) -> str:
    """Why files of `repo` are not here and how to put them in the cache, in a sentence."""
    cache = cache_folder()
    folder = cache / f"models--{repo.replace('/', '--')}"
    at = f" at revision {revision}" if revision else ""
    why = "HF_HUB_OFFLINE is set" if is_offline() else "the Hub could not be reached (no network?)"
    names = " and ".join(filenames)
    verb, them = ("is", "the file") if len(filenames) == 1 else ("are", "the files")
    return (
        f"{names} of the Hugging Face repository {repo}{at} {verb} not in the cache ({cache}), "
        f"and {why}. Put {them} there with `hf download {repo} {' '.join(filenames)}` (on a "
        f"machine with network; then copy {folder} to the same place here; HF_HOME or "
        f"HF_HUB_CACHE choose the cache), or download {them} yourself and pass the path instead"
    )


class HubFileAbsent(FileNotFoundError):
    """The repository has no such file (`unreachable` False), or the cache does not hold it
    and the Hub is out of reach or HF_HUB_OFFLINE is set (`unreachable` True)."""

    def __init__(self, message: str, unreachable: bool):
        super().__init__(message)
        self.unreachable = unreachable
