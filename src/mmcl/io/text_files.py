"""Users' text files (caption tables, texts to embed, prompt templates) read as UTF-8.

Errors name the file, and for text that is not UTF-8 the line of the first bad byte, rather
than Python's bare ``'utf-8' codec can't decode byte 0xff in position 12``.
"""

from __future__ import annotations

import codecs
import os
from pathlib import Path

__all__ = ["read_text"]


def read_text(path: str | os.PathLike, what: str = "text file") -> str:
    """The text of `path`, decoded as UTF-8 with any byte-order mark dropped.

    Spreadsheet exports often start with a byte-order mark, which would otherwise become part
    of the first line. A missing file raises FileNotFoundError, anything else unreadable (a
    folder, no permission, bytes that are not UTF-8) a ValueError; both name the file and
    say it is the `what` (e.g. "caption table").

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "texts.txt"
    >>> _ = path.write_bytes(b"\\xef\\xbb\\xbfa cat\\nna\\xefve\\n")
    >>> read_text(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...texts.txt, line 2: not UTF-8 text (byte 0xef); save the text file as UTF-8
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: a folder, expected a {what}") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ValueError(
            f"{path}, line {line}: not UTF-8 text (byte {data[error.start]:#04x}); "
            f"save the {what} as UTF-8"
        ) from None
