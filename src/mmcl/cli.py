"""The `mmcl` command: models, embed, index, serve, zeroshot, retrieval, caption, capfilt, ...

mmcl models
mmcl embed --model tiny-vit --images photos/ --output photos.npy
mmcl index --features photos.npy --output photos.index
mmcl serve --index photos.index
mmcl zeroshot --model ViT-B-32 --pretrained ViT-B-32.pt --data cifar10/test --dataset cifar10
mmcl retrieval --model ViT-B-32 --pretrained ViT-B-32.pt --captions captions.csv
mmcl retrieval --pretrained blip-retrieval/ --captions captions.csv --images photos --rerank 16
mmcl caption --pretrained blip-captioning/ --images photos --output captions.csv --beams 3
mmcl capfilt --captions web.csv --images photos --captioner blip-cap/ --filter blip-itm/ --output clean.csv
mmcl convert ViT-B-32.pt clip-vit-b32-hf --to hf
mmcl train --config demo
mmcl continual --scenario mini-mtil --method zscl

Each subcommand is a module of `mmcl.commands`; this one parses and reports errors.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import mmcl
from mmcl.commands import COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError) as error:  # CheckpointError is a ValueError
        print(f"mmcl {args.command}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`mmcl models | head`): stop quietly, as other Unix tools do.
        # stdout goes to devnull so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcl", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"mmcl {mmcl.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"mmcl.commands.{name}").add_parser(commands)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
