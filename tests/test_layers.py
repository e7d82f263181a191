"""The package's layers (/work/shared/DESIGN.md) import downward only: every `mmcl` import in
src/mmcl, at the top of a module or inside a function, goes to the module's own layer or a
lower one."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).parents[1] / "src" / "mmcl"
# Lowest first. A layer is a group of top-level names under mmcl (packages or modules) that
# may import each other; `train` and `eval` are siblings that do not. Recipes sit above the
# engine they configure and below the continual runner, which starts from models a recipe
# trains (`continual.pretrained`) and takes a recipe as --model (`continual.generative`).
LAYERS = (
    ("nn",),
    ("io",),
    ("models",),
    ("data",),
    ("train",),
    ("eval",),
    ("recipe", "recipe_bridges", "recipe_cogvlm", "recipe_blip_vqa"),
    ("continual",),
    ("cli", "commands", "serve", "demo", "mmcl"),  # the faces; "mmcl": the package's __init__
)
RANK = {
    "nn": 0,
    "io": 1,
    "models": 2,
    "data": 3,
    "train": 4,
    "eval": 4,
    "recipe": 5,
    "recipe_bridges": 5,
    "recipe_cogvlm": 5,
    "recipe_blip_vqa": 5,
    "continual": 6,
    "cli": 7,
    "commands": 7,
    "serve": 7,
    "demo": 7,
    "mmcl": 7,
}
# Leaves with no mmcl imports of their own, usable from every layer: option names the CLI
# lists without loading torch, and the temp-file-and-rename every writer uses.
ANYWHERE = ("mmcl.choices", "mmcl.io.atomic")


def layer_of(module: str) -> str:
    """The top-level name under mmcl that `module` (dotted) belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mmcl"


def group_of(name: str) -> tuple[str, ...]:
    return next(group for group in LAYERS if name in group)


def mmcl_imports(source: str, module: str) -> list[tuple[int, str]]:
    """`(line, imported module)` of every absolute or relative import of mmcl in `source`."""
    found = []
    package = module.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                base = ".".join([*package[: len(package) - node.level], base]).rstrip(".")
            found += [(node.lineno, base)]
    return sorted((line, name) for line, name in found if name.split(".")[0] == "mmcl")


def upward_imports(source: str, module: str) -> list[str]:
    """Each import in `source` (of the dotted `module`) that leaves for a higher layer or a
    sibling, as ``"module:line imports target"``."""
    own = layer_of(module)
    wrong = []
    for line, target in mmcl_imports(source, module):
        other = layer_of(target)
        if target in ANYWHERE or other == own or other in group_of(own):
            continue
        if RANK[other] >= RANK[own]:
            wrong.append(f"{module}:{line} imports {target}")
    return wrong


def modules():
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def test_every_top_level_name_of_the_package_has_a_layer():
    names = {layer_of(module) for module, _ in modules()} - {"choices"}
    assert names <= set(RANK), f"place {sorted(names - set(RANK))} in LAYERS"
    assert set(RANK) == {name for group in LAYERS for name in group}


def test_no_module_imports_a_higher_layer_or_a_sibling():
    wrong = [w for module, path in modules() for w in upward_imports(path.read_text(), module)]
    assert wrong == []


def test_the_check_finds_an_upward_import_in_a_function_and_a_relative_one():
    source = "def f():\n    from mmcl.recipe_bridges import BRIDGES\nfrom ..eval import vqa\n"
    assert upward_imports(source, "mmcl.continual.generative") == []
    assert upward_imports(source, "mmcl.train.bridges") == [
        "mmcl.train.bridges:2 imports mmcl.recipe_bridges",
        "mmcl.train.bridges:3 imports mmcl.eval",
    ]
    assert upward_imports("import mmcl.io.atomic\nimport mmcl.io.hub\n", "mmcl.nn.lora") == [
        "mmcl.nn.lora:2 imports mmcl.io.hub"
    ]
