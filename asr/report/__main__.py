"""(Re)build a run's report: ``python -m asr.report exp/an4/<run>`` (or ``make report RUN=exp/an4/<run>``)."""

from __future__ import annotations

import argparse
import sys

from asr.report.run_report import build_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="(Re)build <run dir>/report.md and its plots.")
    parser.add_argument("run_dir", help="exp/<recipe>/<run>: a run dir written by asr.train")
    args = parser.parse_args(argv)
    try:
        path = build_report(args.run_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"report: {path}")


if __name__ == "__main__":
    main()
