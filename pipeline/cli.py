"""The `mining-mapper` command: one subcommand per module of `pipeline.commands`."""
from __future__ import annotations

from pipeline.console import quiet_native_logs

quiet_native_logs()  # before anything can import TensorFlow: its C++ side reads the environment once

import argparse
import importlib
import pkgutil
import sys
from types import ModuleType

from pipeline import __version__, commands
from pipeline.console import configure_logging, import_tensorflow_quietly, verbosity_of
from pipeline.flags import (
    HelpFormatter,
    SuggestingParser,
    add_negations,
    all_long_options,
    subparsers,
    unknown_message,
)

SPELLING_NOTE = ("Every flag may be spelled with hyphens or underscores (--min-component-size = --min_component_size); "
                 "every switch --x has a --no-x form.")


def discover_commands() -> list[ModuleType]:
    """Import every module of `pipeline.commands`, sorted by command name."""
    found = []
    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        found.append(module)
    return sorted(found, key=lambda m: m.NAME)


def add_verbosity_flags(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """-v / -q on a parser; on a subcommand they default to 'not given', so they never undo the global ones."""
    default = False if top_level else argparse.SUPPRESS
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="show everything: libraries' INFO lines, ours at DEBUG, with timestamps (default: off)")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="print errors only (default: off)")


def _finish(parser: argparse.ArgumentParser) -> None:
    """Defaults in every --help, `--no-` forms of switches and -v/-q on every (nested) subcommand parser."""
    for sub in subparsers(parser).values():
        sub.formatter_class = HelpFormatter
        add_negations(sub)
        add_verbosity_flags(sub)
        _finish(sub)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subparser per discovered command."""
    parser = SuggestingParser(
        prog="mining-mapper",
        description="Map mining from annual Landsat mosaics: the MapBiomas Collection 9 method.",
        epilog=SPELLING_NOTE,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_verbosity_flags(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in discover_commands():
        command_parser = sub.add_parser(
            module.NAME, help=module.HELP, description=module.HELP, epilog=SPELLING_NOTE,
            add_help=getattr(module, "ADD_HELP", True), formatter_class=HelpFormatter,
        )
        module.configure(command_parser)
        command_parser.set_defaults(_module=module)
    _finish(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one subcommand; user errors exit 2 with a one-line message."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_accepts_extra", False):
        command = subparsers(parser)[args.command]  # its flags, for naming the closest one
        command.error(unknown_message(extra, all_long_options(command)))
    args._extra = extra
    configure_logging(verbosity_of(args.verbose, args.quiet))
    if getattr(args._module, "USES_TENSORFLOW", False):
        import_tensorflow_quietly()
    from pipeline import failures, preflight

    try:
        preflight.check_command(args._module, args)
        return int(args._module.run(args) or 0)
    except Exception as error:  # people's mistakes become one line; bugs keep their traceback
        status = failures.report(error, args.command, args.verbose)
        if status is None:
            raise
        return status


if __name__ == "__main__":
    sys.exit(main())
