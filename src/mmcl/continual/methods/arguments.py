"""A method's arguments, read from its constructor: names, types, defaults, and checked values.

The constructor is the one place a method declares its arguments, so the registry, the
command line (`--method-args ewc.lambda_=100`), `mmcl continual describe` and the reports all
read them from there. A constructor that forwards `**kwargs` to its base class also takes the
base class's arguments.

>>> from mmcl.continual.methods.ewc import EWC
>>> [p.name for p in parameters(EWC)]
['lambda_', 'fisher_samples', 'fisher', 'fisher_batch_size']
>>> effective_arguments(EWC, {"lambda_": 100})["lambda_"]
100.0
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import re
import sys
import types
import typing
from typing import Any

_SKIPPED = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def parameters(cls: type) -> list[inspect.Parameter]:
    """The keyword arguments `cls(...)` accepts, following `**kwargs` up the base classes."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        signature = inspect.signature(klass.__init__)
        own = list(signature.parameters.values())[1:]  # without self
        for parameter in own:
            if parameter.kind not in _SKIPPED:
                found.setdefault(parameter.name, parameter)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own):
            break
    return list(found.values())


def annotation(cls: type, name: str) -> Any:
    """The type `name` is annotated with in the constructor that declares it (None: any)."""
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None or name not in inspect.signature(init).parameters:
            continue
        try:
            return typing.get_type_hints(init).get(name)
        except Exception:  # an annotation that does not evaluate: accept any value
            return None
    return None


def type_name(hint: Any) -> str:
    """`float`, `int | None`, `str | list[str]`, ... as a reader would write it."""
    if hint is None:
        return "any"
    if hint is type(None):
        return "None"
    options = _options(hint)
    if len(options) > 1:
        return " | ".join(type_name(option) for option in options)
    if typing.get_origin(hint) is not None:
        inner = typing.get_args(hint)
        return f"list[{type_name(inner[0])}]" if inner else "list"
    return getattr(hint, "__name__", str(hint))


def check_value(method: str, name: str, value: Any, hint: Any) -> Any:
    """`value` converted to `hint` where that is lossless (an int for a float), else an error."""
    if hint is None:
        return value
    for option in _options(hint):
        converted = _convert(value, option)
        if converted is not _NO:
            return converted
    raise ValueError(f"method argument {method}.{name}: expected {type_name(hint)}, got {value!r}")


def effective_arguments(cls: type, given: dict[str, Any], method: str | None = None):
    """Every argument of `cls` with the value it will get: `given` (checked) or the default."""
    method = method or getattr(cls, "name", cls.__name__)
    accepted = {p.name: p for p in parameters(cls)}
    unknown = [key for key in given if key not in accepted]
    if unknown:
        raise ValueError(unknown_argument_message(method, unknown[0], list(accepted)))
    values = {}
    for name, parameter in accepted.items():
        if name in given:
            values[name] = check_value(method, name, given[name], annotation(cls, name))
        elif parameter.default is not inspect.Parameter.empty:
            values[name] = parameter.default
    return values


def unknown_argument_message(method: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]}?)" if close else ""
    listed = ", ".join(valid) if valid else "none"
    return f"method {method!r} takes no argument {key!r}{hint}; its arguments: {listed}"


def describe_method(name: str, cls: type) -> str:
    """What `mmcl continual describe NAME` prints: summary, paper, arguments."""
    own = cls.__doc__ if "__doc__" in vars(cls) and cls.__doc__ else None
    summary = first_paragraph(own or sys.modules[cls.__module__].__doc__)
    papers = re.findall(r"\(([^()]*\b(?:19|20)\d\d\b[^()]*)\)", summary)
    lines = [f"{name}: {summary}", f"paper: {'; '.join(papers) if papers else 'none (a baseline)'}"]
    lines.append(f"streams: {', '.join(streams_taken(cls))}")
    rows = [
        (p.name, type_name(annotation(cls, p.name)), _shown(p.default)) for p in parameters(cls)
    ]
    if not rows:
        lines.append("arguments: none")
        return "\n".join(lines)
    lines.append(f"arguments (--method-args {name}.KEY=VALUE,...):")
    widths = [max(len(row[i]) for row in [("name", "type", "default"), *rows]) for i in range(3)]
    for row in [("name", "type", "default"), *rows]:
        lines.append(
            "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def streams_taken(cls: type) -> list[str]:
    """The kinds of stream a method runs on, as `describe_method` lists them."""
    kinds = ["classes"] if getattr(cls, "takes_classes", True) else []
    if getattr(cls, "takes_captions", False):
        kinds.append("captioned pairs")
    if getattr(cls, "takes_instructions", False):
        kinds.append("instruction streams (LLaVA-style bridges)")
    return kinds


def first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


# --- conversions ---------------------------------------------------------------------------

_NO = object()


def _options(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _convert(value: Any, hint: Any) -> Any:
    if hint is type(None):
        return None if value is None else _NO
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if ok else _NO
    if hint is str:
        return value if isinstance(value, str) else _NO
    origin = typing.get_origin(hint)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return _NO
        inner = typing.get_args(hint)
        items = [_convert(item, inner[0]) if inner else item for item in value]
        return _NO if any(item is _NO for item in items) else type(value)(items)
    return value if not isinstance(hint, type) or isinstance(value, hint) else _NO


def _shown(default: Any) -> str:
    return "(required)" if default is inspect.Parameter.empty else repr(default)
