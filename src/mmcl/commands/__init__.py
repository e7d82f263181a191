"""The `mmcl` subcommands, one module each.

Every module has `add_parser(commands)`, which adds its subparser and sets `handler`, and imports
nothing heavy at the top: torch and the rest load inside the handler, when the command runs, so
`mmcl --help` answers at once (tests/test_cli_startup.py holds it to that). What several
commands share (model and image-reading options, loading the named model) is in `options`.
"""

# The order `mmcl --help` lists them in.
COMMANDS = (
    "models",
    "embed",
    "index",
    "serve",
    "zeroshot",
    "retrieval",
    "caption",
    "capfilt",
    "ask",
    "convert",
    "train",
    "continual",
)
