"""Command-line flags shared by every command: one spelling rule, strict checking, every default in --help.

Every flag may be written with hyphens or underscores (`--min-component-size` = `--min_component_size`):
`normalise_argv` rewrites each flag to the spelling its parser declares before parsing. `run` takes its
options through Beam's parser, which would only warn about (and then ignore) a flag it does not know;
`check_run_argv` refuses such a flag, and a stray value, before anything runs, naming the closest valid flag.
Beam's own switches (`--streaming`, …), which take no value there, also take `true|false` in `run`
(`switch_values`), as the Flex Template launcher passes them and as every switch of ours does.
"""
from __future__ import annotations

import argparse
import sys
import difflib
from collections.abc import Iterable, Sequence

from pipeline.errors import UserError

TRUE_FALSE = ("true", "false")
# Spellings earlier versions used for a concept that now has one name everywhere: suggested when met.
RENAMED = {"preset": "band_preset", "mode": "filter_mode", "min_size": "min_component_size", "window": "spatial_window",
           "landcover": "land_cover", "landcover_band": "land_cover_band", "mining_value": "class_value",
           "grid_ids": "grids"}


class FlagError(UserError):
    """A command line that cannot be parsed: an unknown flag, a stray value or a bad value (exit status 2)."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's formatter that states the default of every flag, unless the help text already does."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default is argparse.SUPPRESS or "default" in text.lower()
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):
            return text
        if action.required:
            return f"{text} (required)"
        if "required)" in text:  # required by the command, not by argparse (e.g. Beam's options)
            return text
        if action.nargs == 0:  # a switch: absent unless given
            return f"{text} (default: off)"
        if action.default in (None, "", []):
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, SwitchAction):  # `--x [true|false], --no-x`: the negation takes no value
            positive = [o for o in action.option_strings if not flag_key(o).startswith("no_")]
            negative = [o for o in action.option_strings if flag_key(o).startswith("no_")]
            return ", ".join([f"{o} [true|false]" for o in positive] + negative)
        return super()._format_action_invocation(action)


class SwitchAction(argparse.Action):
    """A true/false flag written as a switch (`--x`, `--no-x`) or with a value (`--x true`, `--x=false`).

    Stores the string "true" or "false", the form the Flex Template launcher passes (`--x=true`), so that
    the template's parameter and the switch are one flag.
    """

    def __init__(self, option_strings: Sequence[str], dest: str, default: str = "false", help: str | None = None, **_):
        names = list(option_strings)
        for option in option_strings:
            if option.startswith("--"):
                names.append("--no" + ("-" if "-" in option[2:] else "_") + option[2:])
        super().__init__(names, dest, nargs="?", const="true", default=default, choices=TRUE_FALSE, help=help,
                         metavar="true|false")

    def __call__(self, parser, namespace, values, option_string=None):
        """Record "true" or "false"; a `--no-` form takes no value."""
        negative = bool(option_string) and option_string.lstrip("-").replace("-", "_").startswith("no_")
        if negative and values != "true":  # "true" is the const: no value was given
            parser.error(f"argument {option_string}: takes no value")
        setattr(namespace, self.dest, "false" if negative else values)


def add_negations(parser: argparse.ArgumentParser, skip: Iterable[str] = ("help", "verbose", "quiet")) -> None:
    """Give every `--x` switch of a parser a `--no-x` that turns it off again (one boolean style everywhere).

    Why: a wrapper script can then pass `--no-x` explicitly, and every command's booleans read the same
    as `run`'s (`--origin-band`, `--no-origin-band`). The `--no-` forms stay out of --help (the epilog
    says they exist).
    """
    for action in list(parser._actions):
        if not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.dest in skip:
            continue
        for option in action.option_strings:
            if not option.startswith("--") or option.startswith(("--no-", "--no_")):
                continue
            negation = "--no-" + option[2:]
            if negation not in parser._option_string_actions:
                parser.add_argument(negation, dest=action.dest, action="store_const", const=not action.const,
                                    default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def flag_key(option: str) -> str:
    """The spelling-independent name of a flag: `--min-component-size` and `--min_component_size` give one key."""
    return option.lstrip("-").replace("-", "_")


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """The `--` option strings a parser declares."""
    return [option for option in parser._option_string_actions if option.startswith("--")]


def normalise_argv(argv: Sequence[str], known: Iterable[str]) -> list[str]:
    """Rewrite every `--flag` (or `--flag=value`) to the spelling declared in `known`; other tokens unchanged.

    Why: users write hyphens or underscores interchangeably, and Beam's parser only knows one spelling.
    A flag whose key matches nothing is left as typed, so the error names what the user wrote.
    """
    canonical: dict[str, str] = {}
    for option in known:
        if option.startswith("--"):
            canonical.setdefault(flag_key(option), option)
    result: list[str] = []
    for index, token in enumerate(argv):
        if token == "--":
            result.extend(argv[index:])
            break
        if token.startswith("--"):
            name, separator, value = token.partition("=")
            token = canonical.get(flag_key(name), name) + separator + value
        result.append(token)
    return result


def closest(option: str, known: Iterable[str]) -> str | None:
    """The valid flag nearest to a misspelt one (a renamed flag's new name, else difflib's closest), in its
    declared spelling; None when none is near."""
    by_key = {}
    for name in known:
        if name.startswith("--"):
            by_key.setdefault(flag_key(name), name)
    key = flag_key(option.partition("=")[0])
    if RENAMED.get(key) in by_key:
        return by_key[RENAMED[key]]
    matches = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.6)
    return by_key[matches[0]] if matches else None


def unknown_message(unknown: Sequence[str], known: Iterable[str]) -> str:
    """One line naming the unrecognised flags (each with the closest valid one), else the stray values."""
    known = list(known)
    flags = [token for token in unknown if token.startswith("-") and token != "--"]
    if flags:
        parts = []
        for flag in flags:
            suggestion = closest(flag, known)
            parts.append(f"{flag} (did you mean {suggestion}?)" if suggestion else flag)
        return "unrecognised argument" + ("s" if len(parts) > 1 else "") + ": " + ", ".join(parts)
    return ("unexpected value" + ("s" if len(unknown) > 1 else "") + " " + ", ".join(repr(t) for t in unknown)
            + ": every value follows the flag it belongs to")


class SuggestingParser(argparse.ArgumentParser):
    """The parser of the `mining-mapper` commands: an unknown flag is reported with the closest valid one."""

    def parse_known_args(self, args=None, namespace=None):
        """Parse as argparse does (None: the process's arguments), with every flag first rewritten to its
        declared spelling (- or _)."""
        args = normalise_argv(list(sys.argv[1:] if args is None else args), all_long_options(self))
        return super().parse_known_args(args, namespace)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parsers of a parser's subcommands (one level), by subcommand name."""
    return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def all_long_options(parser: argparse.ArgumentParser) -> list[str]:
    """The `--` options of a parser and of all its subcommands' parsers (recursively)."""
    found = long_options(parser)
    for sub in subparsers(parser).values():
        found.extend(all_long_options(sub))
    return found


def beam_option_classes() -> list[type]:
    """Every registered `PipelineOptions` subclass, recursively (Beam itself looks one level deep)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    found: dict[str, type] = {}
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop(0)
        found.setdefault(f"{cls.__module__}.{cls.__qualname__}", cls)
        pending.extend(cls.__subclasses__())
    return list(found.values())


def beam_parser() -> argparse.ArgumentParser:
    """A parser holding the flags of every registered pipeline option class (ours and Beam's, Dataflow's)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    class _StrictBeamParser(_BeamArgumentParser):
        def error(self, message: str):
            raise FlagError(message)

    parser = _StrictBeamParser(allow_abbrev=False, conflict_handler="resolve", add_help=False)
    for cls in beam_option_classes():
        cls._add_argparse_args(parser)
    return parser


def switch_values(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Beam's switches written with a value, `--streaming=true|false` or `--streaming true|false` (any case),
    rewritten to the bare switch (true) or to nothing (false); every other token unchanged.

    Why: Beam declares its switches `store_true`/`store_false` (no value) and refuses `--streaming=true`
    ("ignored explicit argument"), while the Flex Template launcher passes every parameter as `--name=value`
    and our own switches take true|false. As with any flag, the last occurrence wins: a `false` also drops the
    bare switch given before it. `argv` must already be in the parser's spellings (`normalise_argv`).
    """
    switches = {option for action in parser._actions
                if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                for option in action.option_strings if option.startswith("--")}
    result: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if token == "--":
            result.extend(argv[index:])
            break
        name, separator, value = token.partition("=")
        if name in switches and not separator and index + 1 < len(argv) and argv[index + 1].lower() in TRUE_FALSE:
            value, separator = argv[index + 1], " "
            index += 1
        index += 1
        if name not in switches or not separator:
            result.append(token)
        elif value.lower() == "true":
            result.append(name)
        elif value.lower() == "false":
            result = [kept for kept in result if kept != name]
        else:
            raise FlagError(f"argument {name}: a switch: give it alone or with true|false, not {value!r}")
    return result


def check_run_argv(argv: Sequence[str]) -> list[str]:
    """The pipeline's command line, normalised to Beam's spellings; raises FlagError for anything unknown.

    Why: Beam only warns about a flag it cannot parse and runs with the default, so a misspelt
    `--thresold 0.9` would silently classify at 0.5. Checked before anything is read or run. Beam's switches
    given a value (`--streaming=true`, the Flex Template launcher's form) become bare switches (`switch_values`).
    """
    parser = beam_parser()
    known = long_options(parser)
    normalised = switch_values(normalise_argv(argv, known), parser)
    _, unknown = parser.parse_known_args(normalised)
    if unknown:
        raise FlagError(unknown_message(unknown, known))
    return normalised
