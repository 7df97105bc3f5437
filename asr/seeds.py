"""WER mean ± std over runs that differ only by their seed: a single-seed WER is not a result.

    python -m asr.train -m recipe=an4 seed=1,2,3       # trains 3 runs, then prints and writes seeds.md
    python -m asr.seeds exp/an4/multirun_<time>         # the same summary for any folder of run dirs
"""

from __future__ import annotations

import argparse
import sys

from asr.report.seeds import write_summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="WER mean ± std over seeds of asr.train runs.")
    parser.add_argument("root", help="exp/<recipe>/multirun_<time>, or any folder holding run dirs")
    args = parser.parse_args(argv)
    try:
        path = write_summary(args.root)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{path.read_text()}summary: {path}")


if __name__ == "__main__":
    main()
