"""`mmcl serve`: a search page and API over a `mmcl index` folder (FastAPI, run by uvicorn)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(commands) -> None:
    serve = commands.add_parser("serve", help="a search page and API over an index folder")
    serve.add_argument("--index", type=Path, required=True, help="a `mmcl index` folder")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens "
        "the service to the network)",
    )
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--model", help="the query model's name (default: the one the index records)"
    )
    serve.add_argument(
        "--pretrained",
        help="the query model's checkpoint (default: the one the index records); its weights "
        "must be those the index was made with",
    )
    serve.add_argument("--device", default="cpu")
    serve.add_argument(
        "--root",
        type=Path,
        help="the folder the index's relative image paths start from: where `mmcl embed` ran "
        "(default: the current folder)",
    )
    serve.add_argument("--max-k", type=int, default=100, help="the most results a query")
    serve.add_argument(
        "--max-request-mb", type=float, default=10, help="the largest request (upload) accepted"
    )
    serve.add_argument(
        "--max-concurrency",
        type=int,
        default=64,
        help="connections served at once; more are answered 503",
    )
    serve.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from mmcl.serve.app import create_app
    except ImportError as error:
        raise ValueError(f"mmcl serve needs {error.name}: pip install 'mmcl[serve]'") from None
    from mmcl.commands.options import create_model_for_command
    from mmcl.serve.searcher import index_model_source

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be from 1 to 65535, got {args.port}")
    if args.max_request_mb <= 0 or args.max_k < 1 or args.max_concurrency < 1:
        raise ValueError("--max-request-mb, --max-k and --max-concurrency must be positive")
    try:
        name, pretrained = index_model_source(args.index)  # a missing index fails here, first
    except ImportError as error:  # faiss: its message says which extra to install
        raise ValueError(str(error)) from None
    name, pretrained = args.model or name, args.pretrained or pretrained
    if pretrained is None:
        raise ValueError(
            f"{args.index} records no checkpoint for its model: give the one its images were "
            f"embedded with as --pretrained"
        )
    model = create_model_for_command(args, name, pretrained, device=args.device)
    app = create_app(
        args.index,
        model,
        device=args.device,
        root=args.root,
        max_k=args.max_k,
        max_request_bytes=int(args.max_request_mb * 2**20),
    )
    print(
        f"mmcl serve: {app.state.searcher.rows} images; open http://{args.host}:{args.port}/",
        flush=True,  # before uvicorn's log lines, also when the output is a file
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        limit_concurrency=args.max_concurrency,
        log_level="warning" if args.quiet else "info",
    )
    return 0
