"""The mutation score of each core module, from the results `mutmut run` left in mutants/ (see docs/mutation.md).

    python tools/mutation_report.py                        every module in [tool.mutmut] only_mutate
    python tools/mutation_report.py helpers/train/optim.py one module, and its surviving mutants

A mutant is caught when a test fails (killed) or runs out of time (timeout); the score is caught / tried.
"""
from __future__ import annotations

import json
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAUGHT = {"killed", "timeout"}
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", 37: "type check",
          -11: "segfault", -9: "segfault", None: "not run"}


def results(module: str) -> dict[str, str]:
    """{mutant name: status} of `module` (a path like helpers/train/optim.py); empty before the first run."""
    meta = ROOT / "mutants" / f"{module}.meta"
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: STATUS.get(code, "suspicious") for name, code in codes.items()}


def row(module: str) -> str:
    counts = Counter(results(module).values())
    tried = sum(n for status, n in counts.items() if status != "not run")
    caught = sum(counts[status] for status in CAUGHT)
    score = f"{caught / tried:.0%}" if tried else "-"
    return (f"| {module} | {sum(counts.values())} | {counts['killed']} | {counts['timeout']} | {counts['survived']} "
            f"| {counts['no tests']} | {counts['not run']} | {score} |")


def main(argv: list[str]) -> int:
    configured = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"]
    modules = argv or configured
    unknown = [module for module in modules if module not in configured]
    if unknown:
        print(f"Not a mutated module: {', '.join(unknown)}; choose from {', '.join(configured)}.")
        return 2
    print("| module | mutants | killed | timeout | survived | no tests | not run | score |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for module in modules:
        print(row(module))
    survivors = [name for module in modules for name, status in results(module).items()
                 if status not in CAUGHT | {"not run"}]
    if survivors:
        print(f"\n{len(survivors)} not caught (see each with: mutmut show <name>):")
        print("\n".join(f"  {name}" for name in survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
