"""The command line: `python -m helpers.course run | outputs | student`.

    python -m helpers.course run                       # every notebook, default profile -> build/
    python -m helpers.course run 02_freezing -p epochs 3 --profile cpu
    python -m helpers.course outputs                   # refresh the committed outputs (cpu profile)
    python -m helpers.course student --out build/student  # copies without solutions, for a workshop
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helpers import profiles
from helpers.course.notebook import BUILD
from helpers.course.runner import parse_overrides, refresh_outputs, run, summary_table
from helpers.course.student import make_student_copies


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.course", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="execute notebooks headless into build/ with a summary")
    run_parser.add_argument("notebooks", nargs="*", help="notebook names (default: all, in order)")
    run_parser.add_argument("--profile", default="auto", choices=profiles.PROFILE_NAMES)
    run_parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                            help="override one setting, e.g. -p epochs 3")
    run_parser.add_argument("--out", type=Path, default=BUILD)
    outputs_parser = commands.add_parser("outputs", help="refresh the committed outputs (cpu profile)")
    outputs_parser.add_argument("notebooks", nargs="*")
    student_parser = commands.add_parser("student", help="student copies: solutions removed, outputs cleared")
    student_parser.add_argument("notebooks", nargs="*")
    student_parser.add_argument("--out", type=Path, default=BUILD / "student")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            results = run(args.notebooks, args.profile, parse_overrides(args.param), args.out)
            print(f"\nsummary written to {args.out / 'summary.md'}\n\n{summary_table(results)}")
        elif args.command == "student":
            written = make_student_copies(args.out, args.notebooks)
            print(f"{len(written)} student notebooks written to {args.out}")
            return 0
        else:
            results = refresh_outputs(args.notebooks)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = [r.notebook for r in results if not r.ok]
    if failed:
        print(f"\n{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
