"""Continual-learning methods, one file each, and the registry that builds them by name.

>>> from mmcl.continual.methods import build_method
>>> build_method("wise_ft", alpha=0.3)
WiseFT(alpha=0.3)
>>> build_method("finetune+wise_ft").name
'finetune+wise_ft'
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from mmcl.continual.methods.base import Method
from mmcl.continual.methods.composite import Composite
from mmcl.continual.methods.finetune import Finetune
from mmcl.continual.methods.frozen import Frozen
from mmcl.continual.methods.joint import Joint
from mmcl.continual.methods.wise_ft import WiseFT

METHODS: dict[str, type[Method]] = {
    "finetune": Finetune,
    "frozen": Frozen,
    "joint": Joint,
    "wise_ft": WiseFT,
}


def available_methods() -> list[str]:
    return sorted(METHODS)


def build_method(spec: str, **arguments: Any) -> Method:
    """A method by name; `a+b` composes methods. Arguments go to the part that accepts them."""
    names = [part.strip() for part in spec.split("+") if part.strip()]
    if not names:
        raise ValueError("no method named")
    parts, unused = [], dict(arguments)
    for name in names:
        if name not in METHODS:
            close = difflib.get_close_matches(name, METHODS, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown method {name!r}.{hint} Valid methods: {', '.join(available_methods())}"
            )
        accepted = set(inspect.signature(METHODS[name]).parameters)
        mine = {k: unused.pop(k) for k in list(unused) if k in accepted}
        parts.append(METHODS[name](**mine))
    if unused:
        raise ValueError(f"method {spec!r} takes no argument(s) {sorted(unused)}")
    return parts[0] if len(parts) == 1 else Composite(parts)


__all__ = ["METHODS", "Method", "available_methods", "build_method"]
