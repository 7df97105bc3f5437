"""Rebuild what a run, or a set of runs, left to read.

    python -m asr.report exp/an4/<run>                    # report.md, plots, report.html
    python -m asr.report --seeds exp/an4/multirun_<time>  # WER mean ± std over the seeds below
"""

from __future__ import annotations

import argparse

from asr.cli import user_errors
from asr.report.run_report import build_report
from asr.report.seeds import write_summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="(Re)build <run dir>/report.md, its plots and report.html, or with --seeds the "
                    "WER mean ± std over seeds of the run dirs below a folder.")
    parser.add_argument("folder", help="exp/<recipe>/<run> (a run dir written by asr.train), or "
                                       "with --seeds exp/<recipe>/multirun_<time> or any folder "
                                       "holding run dirs")
    parser.add_argument("--seeds", action="store_true",
                        help="write and print <folder>/seeds.md: a single-seed WER is not a result")
    args = parser.parse_args(argv)
    with user_errors():
        if args.seeds:
            path = write_summary(args.folder)
            print(path.read_text(), end="")
        else:
            path = build_report(args.folder)
    if args.seeds:
        print(f"summary: {path}")
    else:
        print(f"report: {path}\nreport: {path.with_name('report.html')} "
              "(one self-contained page, with audio)")


if __name__ == "__main__":
    main()
