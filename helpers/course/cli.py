"""The command line: `python -m helpers.course COMMAND ...`.

    python -m helpers.course run                       # every notebook, default profile -> build/
    python -m helpers.course run 02_freezing -p epochs 3 --profile cpu
    python -m helpers.course outputs                   # refresh the committed outputs (cpu profile)
    python -m helpers.course student                   # copies without solutions -> notebooks/student
    python -m helpers.course prefetch [--stand-in]     # cache the gpu profile's model and CIFAR-10
    python -m helpers.course sweep 07_your_photos -p lr 1e-4,3e-4 -p seed 0,1,2 --jobs 2
    python -m helpers.course finetune --data imagefolder:PATH --model tiny-vit --out build/my-model
    python -m helpers.course doctor                    # is this machine ready for the course?
    python -m helpers.course bundle --out FILE         # a workshop in one file, for machines with no network
    python -m helpers.course install-bundle FILE       # set a machine up from it, offline
    python -m helpers.course site                      # the executed lessons as static HTML -> build/site
    python -m helpers.course tidy                      # kernel metadata, Colab badge and install cell

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
from helpers.course.student import STUDENT_DIR, make_student_copies
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
    name, help = "student", "student copies of the committed notebooks: solutions stubbed, outputs cleared"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("notebooks", nargs="*")
        parser.add_argument("--out", type=Path, default=STUDENT_DIR)
        parser.add_argument("--force", action="store_true", help="replace copies that were changed since")

    def run(self, args) -> int:
        written = make_student_copies(args.out, args.notebooks, force=args.force)
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


class DoctorCommand:
    name, help = "doctor", "is this machine ready for the course? one line per check, with the fix"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--brief", action="store_true", help="only the lines that need a fix")

    def run(self, args) -> int:
        from helpers.course.doctor import doctor

        return doctor(brief=args.brief)


class BundleCommand:
    name, help = "bundle", "pack wheels, cached gpu model and data, student copies into one file for offline rooms"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, required=True)
        parser.add_argument("--python", help="target Python version, e.g. 3.11.7 (default: this one)")
        parser.add_argument("--wheels", type=Path, help="a folder of wheels to pack instead of downloading them")

    def run(self, args) -> int:
        from helpers.course.bundle import build

        manifest = build(args.out, args.python, args.wheels)
        size = sum(f["size"] for f in manifest["files"].values())
        print(f"{args.out}: {len(manifest['files'])} files, {size / 1e9:.2f} GB, for {manifest['target']}")
        return 0


class InstallBundleCommand:
    name, help = "install-bundle", "set this machine up from a bundle with no network (checksums verified)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("bundle", type=Path)
        parser.add_argument("--venv", type=Path, help="the environment to install into (default: the kit's .venv)")

    def run(self, args) -> int:
        from helpers.course.bundle import ROOT, install

        print(install(args.bundle, args.venv or ROOT / ".venv"))
        return 0


class SiteCommand:
    name, help = "site", "static HTML of the executed lessons, with the course map -> build/site"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--out", type=Path, default=BUILD / "site")

    def run(self, args) -> int:
        from helpers.course.website import build_site

        pages = build_site(args.out)
        print(f"{len(pages)} pages written to {args.out}; open {args.out / 'index.html'}")
        return 0


class TidyCommand:
    name, help = "tidy", "give notebooks this kernel's metadata, the Colab badge and the Colab install cell"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("notebooks", nargs="*")

    def run(self, args) -> int:
        from helpers.course.tidy import tidy_notebooks

        changed = tidy_notebooks(args.notebooks)
        print(f"{len(changed)} notebooks changed" + (f": {', '.join(p.name for p in changed)}" if changed else ""))
        return 0


COMMANDS = [RunCommand(), OutputsCommand(), StudentCommand(), DoctorCommand(), TidyCommand(), SiteCommand(),
            BundleCommand(), InstallBundleCommand(), PrefetchCommand(), SweepCommand(), FinetuneCommand()]


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
