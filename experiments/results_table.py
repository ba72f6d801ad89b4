"""A narrow view of a runner's records as a Markdown table: the accuracy columns, or the speed
columns, of results.md, for the README.

Run: python experiments/results_table.py accuracy docs/results/digits-seeds/results.jsonl
     python experiments/results_table.py speed docs/results/cpu-compile/results.jsonl
It uses benchmark.py's own statistics and ratios; it runs nothing.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmark  # noqa: E402

VIEWS = {
    "accuracy": [
        "Script",
        "Precision in effect",
        "Test acc. (%)",
        "SD over seeds (points)",
        "Min–max over seeds (%)",
        "Vs 01, paired by seed",
        "Vs parent, paired by seed",
    ],
    "speed": benchmark.SPEED,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("view", choices=VIEWS, help="which columns")
    parser.add_argument("results", type=Path, help="a results.jsonl the runner wrote")
    args = parser.parse_args()
    records, skipped = benchmark.read_results(args.results)
    for sentence in skipped:
        print(sentence, file=sys.stderr)
    for settings, summary, comparisons in benchmark.by_setting(records):
        pairs = zip(summary, comparisons, strict=True)
        cells = [benchmark.table_cells(row, ratio) for row, ratio in pairs]
        print(f"Setting: {', '.join(f'{key} {value}' for key, value in settings.items())}.\n")
        print("\n".join(benchmark.table(VIEWS[args.view], cells)))


if __name__ == "__main__":
    main()
