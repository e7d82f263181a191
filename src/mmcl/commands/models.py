"""`mmcl models`: the model names, or (--pretrained) the pretrained tags and their cache."""

from __future__ import annotations

import argparse

from mmcl.io.tables import print_table


def add_parser(commands) -> None:
    models = commands.add_parser("models", help="list model names")
    models.add_argument("--filter", default="", help="only names containing this text")
    models.add_argument(
        "--pretrained",
        action="store_true",
        help="list the pretrained tags (create_model(name, pretrained=tag), --pretrained TAG), "
        "their Hugging Face repositories and whether the cache holds them",
    )
    models.set_defaults(handler=run_models)


def run_models(args: argparse.Namespace) -> int:
    from mmcl.models.registry import OPENAI_ALIASES, available_models, get_model_config

    if args.pretrained:
        return list_pretrained_tags(args.filter)
    aliases = {}
    for alias, target in OPENAI_ALIASES.items():
        aliases.setdefault(target, []).append(alias)
    rows = []
    for name in available_models():
        if args.filter.lower() not in name.lower():
            continue
        config = get_model_config(name)
        vision = config["vision_cfg"]
        tower = "ViT" if vision.get("patch_size") else "ModifiedResNet"
        rows.append(
            [
                name,
                tower,
                str(vision["image_size"]),
                str(config["embed_dim"]),
                ", ".join(aliases.get(name, [])),
            ]
        )
    print_table(["name", "image tower", "image size", "embed dim", "also known as"], rows)
    return 0


def list_pretrained_tags(name_filter: str) -> int:
    """`mmcl models --pretrained`: the tags, with their repositories and cache state."""
    from mmcl.io.hub import cache_folder, cached_file
    from mmcl.models.pretrained import pretrained_tags

    rows = [
        [
            entry.model,
            entry.tag,
            entry.activation,
            f"{entry.repo} {entry.filename}",
            "yes" if cached_file(entry.repo, entry.filename) else "no",
        ]
        for entry in pretrained_tags()
        if name_filter.lower() in entry.model.lower()
    ]
    print_table(["name", "tag", "activation", "Hugging Face file", "cached"], rows)
    print(
        f"cache: {cache_folder()} (HF_HOME / HF_HUB_CACHE); "
        "names ending in -quickgelu take the QuickGELU tags of their base name"
    )
    return 0
