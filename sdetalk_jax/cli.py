"""The one command-line convention of every `python -m sdetalk_jax...` command.

Each command is `main(argv=None) -> int` on an argparse parser: `--help` describes it, a usage
mistake exits with 2 and says why, a failure the user can fix (bad data, a missing run, unreadable
audio) prints one line `error: ...` on stderr and exits with 1, and success exits with 0. Commands
that read a config file (`--config configs/x.py`) also take any field as `--config.FIELD=VALUE`,
parsed and type-checked by ml_collections' config flags.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

CONFIG_OVERRIDE_PREFIX = "--config."


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argparse parser whose description is the first paragraph of the command's docstring."""
    description = (doc or "").strip().split("\n\n")[0]
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="Python config file (configs/*.py); override any field with --config.FIELD=VALUE, "
        "e.g. --config.train.epochs=3",
    )


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None):
    """(args, config): the command's own arguments, and the config file with its overrides
    applied (locked: a misspelt field is an error, not a new field)."""
    from absl import flags
    from ml_collections import config_flags

    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = parser.parse_known_args(argv)
    if rest and not rest[0].startswith(CONFIG_OVERRIDE_PREFIX):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if not os.path.isfile(args.config):
        parser.error(f"--config {args.config}: no such file")
    flag_argv = [parser.prog, "--config", args.config, *rest]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "config file", flag_values=values, lock_config=True, sys_argv=flag_argv
    )
    try:
        values(flag_argv)
        config = values.config
    except (AttributeError, KeyError) as error:  # a field the config does not have
        parser.error(f"{args.config} {_missing_field(str(error))} (overrides: {' '.join(rest)})")
    except (flags.Error, TypeError, ValueError, OSError) as error:
        parser.error(f"{args.config}: {error}")
    return args, config


def _missing_field(message: str) -> str:
    """ml_collections' KeyError text (quoted, nested, with a suggestion) as one plain sentence."""
    field = re.search(r"\w+", message)
    suggestion = re.search(r'Did you mean "([^"]+)"', message)
    text = f"has no field '{field.group(0) if field else message}'"
    return text + (f" (did you mean '{suggestion.group(1)}'?)" if suggestion else "")


def report(error: Exception) -> int:
    """Prints a failure the user can fix as one `error:` line; the exit status 1."""
    print(f"error: {error}", file=sys.stderr)
    return 1
