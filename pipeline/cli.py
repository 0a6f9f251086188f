"""The `mining-mapper` command: one subcommand per module of `pipeline.commands`."""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
import traceback
from types import ModuleType

from pipeline import __version__, commands
from pipeline.errors import UserError


def discover_commands() -> list[ModuleType]:
    """Import every module of `pipeline.commands`, sorted by command name."""
    found = []
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        found.append(module)
    return sorted(found, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per discovered command."""
    parser = argparse.ArgumentParser(
        prog="mining-mapper",
        description="Map mining from annual Landsat mosaics: the MapBiomas Collection 9 method.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages; on an error, also print its traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in discover_commands():
        command_parser = sub.add_parser(
            module.NAME, help=module.HELP, description=module.HELP, add_help=getattr(module, "ADD_HELP", True)
        )
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run, _module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand; user errors exit 2 with a one-line message."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args._extra = extra
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from pipeline import failures, preflight

    try:
        preflight.check_command(args._module, args)
        return int(args._run(args) or 0)
    except Exception as error:  # people's mistakes become one line; bugs keep their traceback
        message = str(error) if isinstance(error, UserError) else failures.describe(error)
        if message is None:
            raise
        if args.verbose:
            traceback.print_exc()
        print(f"mining-mapper {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
