"""The command line: `python -m helpers.course COMMAND ...`.

    python -m helpers.course run                       # every notebook, default profile -> build/
    python -m helpers.course run 02_freezing -p epochs 3 --profile cpu
    python -m helpers.course outputs                   # refresh the committed outputs (cpu profile)
    python -m helpers.course student --out build/student  # copies without solutions, for a workshop
    python -m helpers.course prefetch [--stand-in]     # cache the gpu profile's model and CIFAR-10
    python -m helpers.course sweep 07_your_photos -p lr 1e-4,3e-4 -p seed 0,1,2 --jobs 2
    python -m helpers.course finetune --data imagefolder:PATH --model tiny-vit --out build/my-model

Each command is a small class in `COMMANDS`: a name, a help line, `add_arguments(parser)` and
`run(args) -> exit status`. A `ValueError` from a command becomes one `error:` line and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helpers import profiles
from helpers.course.finetune import FinetuneCommand
from helpers.course.notebook import BUILD
from helpers.course.runner import CELL_TIMEOUT_S, Result, parse_overrides, refresh_outputs, run, summary_table
from helpers.course.student import make_student_copies
from helpers.course.sweep import SweepCommand


def exit_status(results: list[Result]) -> int:
    """0 when every notebook ran, else 1 after naming the ones that failed."""
    failed = [r.notebook for r in results if not r.ok]
    if failed:
        print(f"\n{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def add_cell_timeout(parser: argparse.ArgumentParser) -> None:
    limits = ", ".join(f"{name} {seconds} s" for name, seconds in CELL_TIMEOUT_S.items())
    parser.add_argument("--cell-timeout", type=int, default=None, metavar="SECONDS",
                        help=f"limit on one cell's run time (default by profile: {limits}; 0: no limit)")


class RunCommand:
    name, help = "run", "execute notebooks headless into build/ with a summary"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("notebooks", nargs="*", help="notebook names (default: all, in order)")
        parser.add_argument("--profile", default="auto", choices=profiles.PROFILE_NAMES)
        parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                            help="override one setting, e.g. -p epochs 3")
        parser.add_argument("--out", type=Path, default=BUILD)
        add_cell_timeout(parser)

    def run(self, args) -> int:
        results = run(args.notebooks, args.profile, parse_overrides(args.param), args.out, args.cell_timeout)
        print(f"\nsummary written to {args.out / 'summary.md'}\n\n{summary_table(results)}")
        return exit_status(results)


class OutputsCommand:
    name, help = "outputs", "refresh the committed outputs (cpu profile)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("notebooks", nargs="*")
        add_cell_timeout(parser)

    def run(self, args) -> int:
        return exit_status(refresh_outputs(args.notebooks, args.cell_timeout))


class StudentCommand:
    name, help = "student", "student copies: solutions removed, outputs cleared"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("notebooks", nargs="*")
        parser.add_argument("--out", type=Path, default=BUILD / "student")

    def run(self, args) -> int:
        written = make_student_copies(args.out, args.notebooks)
        print(f"{len(written)} student notebooks written to {args.out}")
        return 0


class PrefetchCommand:
    name, help = "prefetch", "cache the gpu profile's model and CIFAR-10 (--stand-in: same-shaped stand-ins)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--stand-in", action="store_true",
                            help="write stand-ins with the real shapes (random weights, generated images), offline")

    def run(self, args) -> int:
        from helpers.course.prefetch import prefetch

        return prefetch(stand_in=args.stand_in)


COMMANDS = [RunCommand(), OutputsCommand(), StudentCommand(), PrefetchCommand(), SweepCommand(), FinetuneCommand()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_arguments(subparsers.add_parser(command.name, help=command.help))
    args = parser.parse_args(argv)
    command = next(c for c in COMMANDS if c.name == args.command)
    try:
        return command.run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
