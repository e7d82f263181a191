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
from mmcl.continual.methods.coop import CoOp
from mmcl.continual.methods.der import DarkExperienceReplay, DarkExperienceReplayPlusPlus
from mmcl.continual.methods.ewc import EWC, OnlineEWC
from mmcl.continual.methods.finetune import Finetune
from mmcl.continual.methods.frozen import Frozen
from mmcl.continual.methods.icarl import ICaRL
from mmcl.continual.methods.joint import Joint
from mmcl.continual.methods.l2p import L2P
from mmcl.continual.methods.lwf import LwF
from mmcl.continual.methods.moe_adapters import MoEAdapters
from mmcl.continual.methods.replay import ExperienceReplay
from mmcl.continual.methods.wise_ft import WiseFT
from mmcl.continual.methods.zscl import ZSCL

METHODS: dict[str, type[Method]] = {
    # baselines
    "finetune": Finetune,
    "frozen": Frozen,
    "joint": Joint,
    # regularisation
    "ewc": EWC,
    "online_ewc": OnlineEWC,
    "lwf": LwF,
    "zscl": ZSCL,
    "wise_ft": WiseFT,
    # replay
    "er": ExperienceReplay,
    "icarl": ICaRL,
    "der": DarkExperienceReplay,
    "derpp": DarkExperienceReplayPlusPlus,
    # architecture
    "moe_adapters": MoEAdapters,
    # prompts
    "coop": CoOp,
    "l2p": L2P,
}


def available_methods() -> list[str]:
    return sorted(METHODS)


def build_method(spec: str, **arguments: Any) -> Method:
    """A method by name; `a+b` composes methods.

    An argument goes to the first part that accepts it; `part.key` sends it to that part only
    (`build_method("lwf+ewc", **{"ewc.lambda_": 100, "lwf.lambda_": 1})`).
    """
    names = [part.strip() for part in spec.split("+") if part.strip()]
    if not names:
        raise ValueError("no method named")
    unused = {k: v for k, v in arguments.items() if "." not in k}
    targeted: dict[str, dict[str, Any]] = {}
    for key, value in arguments.items():
        if "." in key:
            part, _, field = key.partition(".")
            if part not in names:
                raise ValueError(f"argument {key!r}: {part!r} is not a part of {spec!r}")
            targeted.setdefault(part, {})[field] = value
    parts = []
    for name in names:
        if name not in METHODS:
            close = difflib.get_close_matches(name, METHODS, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown method {name!r}.{hint} Valid methods: {', '.join(available_methods())}"
            )
        accepted = set(inspect.signature(METHODS[name]).parameters)
        mine = {k: unused.pop(k) for k in list(unused) if k in accepted}
        for key in targeted.get(name, {}):
            if key not in accepted:
                raise ValueError(f"method {name!r} takes no argument {key!r}")
        mine.update(targeted.get(name, {}))
        parts.append(METHODS[name](**mine))
    if unused:
        raise ValueError(f"method {spec!r} takes no argument(s) {sorted(unused)}")
    return parts[0] if len(parts) == 1 else Composite(parts)


__all__ = ["METHODS", "Method", "available_methods", "build_method"]
