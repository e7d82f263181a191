"""Continual-learning methods, one file each, and the registry that builds them by name.

>>> from mmcl.continual.methods import build_method
>>> build_method("wise_ft", alpha=0.3)
WiseFT(alpha=0.3)
>>> build_method("finetune+wise_ft").name
'finetune+wise_ft'
"""

from __future__ import annotations

import difflib
from typing import Any

from mmcl.continual.methods.arguments import (
    effective_arguments,
    parameters,
    unknown_argument_message,
)
from mmcl.continual.methods.base import Method
from mmcl.continual.methods.composite import Composite
from mmcl.continual.methods.coop import CoOp
from mmcl.continual.methods.cpe_clip import CPECLIP
from mmcl.continual.methods.der import DarkExperienceReplay, DarkExperienceReplayPlusPlus
from mmcl.continual.methods.ewc import EWC, OnlineEWC
from mmcl.continual.methods.finetune import Finetune
from mmcl.continual.methods.frozen import Frozen
from mmcl.continual.methods.icarl import ICaRL
from mmcl.continual.methods.joint import Joint
from mmcl.continual.methods.kdr import KDR
from mmcl.continual.methods.l2p import L2P
from mmcl.continual.methods.lwf import LwF
from mmcl.continual.methods.mod_x import ModX
from mmcl.continual.methods.modal_prompt import ModalPrompt
from mmcl.continual.methods.moe_adapters import MoEAdapters
from mmcl.continual.methods.moe_lora import MoELoRA
from mmcl.continual.methods.o_lora import OLoRA
from mmcl.continual.methods.replay import ExperienceReplay
from mmcl.continual.methods.s_prompts import SPrompts
from mmcl.continual.methods.task_lora import TaskLoRA
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
    "mod_x": ModX,
    # replay
    "er": ExperienceReplay,
    "icarl": ICaRL,
    "der": DarkExperienceReplay,
    "derpp": DarkExperienceReplayPlusPlus,
    "kdr": KDR,
    # architecture
    "moe_adapters": MoEAdapters,
    # LoRA experts and prompts for bridge models (instruction streams)
    "moe_lora": MoELoRA,
    "o_lora": OLoRA,
    "task_lora": TaskLoRA,
    "modal_prompt": ModalPrompt,
    # prompts
    "coop": CoOp,
    "l2p": L2P,
    "cpe_clip": CPECLIP,
    "s_prompts": SPrompts,
}


def available_methods() -> list[str]:
    return sorted(METHODS)


def build_method(spec: str, **arguments: Any) -> Method:
    """A method by name; `a+b` composes methods.

    `part.key` sends an argument to that part (`build_method("lwf+ewc", **{"ewc.lambda_": 100,
    "lwf.lambda_": 1})`); a bare key goes to the one part that takes it, and one that several
    parts take is refused rather than guessed. Values are checked
    against the constructor's types (an int is accepted for a float), and every part records
    its effective arguments, defaults included, in `part.arguments` (see `method_arguments`).
    """
    names = [part.strip() for part in spec.split("+") if part.strip()]
    if not names:
        raise ValueError("no method named")
    for name in names:
        if name not in METHODS:
            close = difflib.get_close_matches(name, METHODS, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown method {name!r}.{hint} Valid methods: {', '.join(available_methods())}"
            )
    accepted = {name: [p.name for p in parameters(METHODS[name])] for name in names}
    given: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in arguments.items():
        part, dot, field = key.partition(".")
        if dot:
            if part not in names:
                raise ValueError(
                    f"argument {key!r}: {part!r} is not a part of {spec!r} (parts: "
                    f"{', '.join(names)})"
                )
            given[part][field] = value
            continue
        owners = [name for name in names if key in accepted[name]]
        if not owners:
            valid = [f"{n}.{a}" if len(names) > 1 else a for n in names for a in accepted[n]]
            raise ValueError(unknown_argument_message(spec, key, valid))
        if len(owners) > 1:  # never guess which part a shared name meant
            raise ValueError(
                f"argument {key!r} is taken by several parts of {spec!r}: write "
                f"{' or '.join(f'{name}.{key}' for name in owners)}"
            )
        given[owners[0]][key] = value
    parts = []
    for name in names:
        effective = effective_arguments(METHODS[name], given[name], name)
        part = METHODS[name](**{k: v for k, v in effective.items() if k in given[name]})
        part.arguments = effective
        parts.append(part)
    return parts[0] if len(parts) == 1 else Composite(parts)


def method_arguments(method: Method) -> dict[str, dict[str, Any]]:
    """Every part's effective arguments, defaults included: `{"ewc": {"lambda_": 1000.0, ...}}`.

    A method built by `build_method` recorded them; one built directly is read back from the
    attributes named like its constructor's arguments (defaults where there is none).
    """
    result = {}
    for part in getattr(method, "parts", [method]):
        recorded = getattr(part, "arguments", None)
        if recorded is None:  # only plain values: an attribute may hold something else
            plain = (type(None), bool, int, float, str, list, tuple)
            recorded = {
                p.name: value
                for p in parameters(type(part))
                if isinstance(value := getattr(part, p.name, p.default), plain)
            }
        result[part.name] = dict(recorded)
    return result


__all__ = ["METHODS", "Method", "available_methods", "build_method", "method_arguments"]
