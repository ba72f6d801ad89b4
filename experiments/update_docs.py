"""Fill the generated blocks of README.md and docs/*.md from real files, diffs and runs.

A block is a pair of HTML comments around text that this script writes, never a person:

    <!-- file: docs/results/cpu/results.md -->     the file's text (a runner's table)
    <!-- diff: 01_fabric_baseline.py 04_fabric_bf16true.py -->   `diff`'s output, as a diff block
    <!-- output: python 04_fabric_bf16true.py --quick -->        what the command prints, run now
    <!-- markdown: python experiments/why_16true_diverges.py -->  the same, as Markdown itself
    <!-- table: accuracy docs/results/digits/results.jsonl -->  experiments/results_table.py's view
    ...
    <!-- end -->

Run: python experiments/update_docs.py            (files, diffs and tables: seconds)
     python experiments/update_docs.py --run      (also reruns every output block: minutes)
     python experiments/update_docs.py --run --only 04_fabric   (those whose command holds it)
Commands run from the repository root through bash, so a block may end in `| tail -n 5`.
tests/test_docs.py checks that every file, diff and table block matches what this script would
write.
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = "file|diff|table|output|markdown"
BLOCK = re.compile(rf"<!-- ({KINDS}): (.+?) -->\n(.*?)<!-- end -->", re.DOTALL)


def documents() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def diff_block(names: str) -> str:
    """`diff A B` as a Markdown diff block, headed by the command."""
    result = subprocess.run(["diff", *names.split()], cwd=REPO, capture_output=True, text=True)
    return f"```diff\n$ diff {names}\n{result.stdout}```\n"


def printed(command: str) -> str:
    """What `command` prints on stdout and stderr, run by bash from the repository root."""
    result = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True)
    return (result.stdout + result.stderr).rstrip() + "\n"


def expected(kind: str, argument: str, current: str, run: bool, only: str = "") -> str:
    """The text a block should hold; an output block keeps its text unless `run` and its command
    holds `only`."""
    if kind == "file":
        return (REPO / argument).read_text().rstrip() + "\n"
    if kind == "diff":
        return diff_block(argument)
    if kind == "table":
        return printed(f"{sys.executable} experiments/results_table.py {argument}")
    if not run or only not in argument:
        return current
    if kind == "markdown":
        return printed(argument)
    return f"```text\n$ {argument}\n{printed(argument)}```\n"


def update(path: Path, run: bool, only: str = "") -> bool:
    """Rewrite the blocks of one document; True if its text changed."""
    text = path.read_text()

    def fill(match: re.Match) -> str:
        kind, argument, current = match.groups()
        new = expected(kind, argument, current, run, only)
        return f"<!-- {kind}: {argument} -->\n{new}<!-- end -->"

    new_text = BLOCK.sub(fill, text)
    if new_text != text:
        path.write_text(new_text)
    return new_text != text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="rerun the commands of output blocks")
    parser.add_argument("--only", default="", metavar="TEXT", help="with --run: commands with TEXT")
    args = parser.parse_args()
    for path in documents():
        if update(path, args.run, args.only):
            print(f"updated {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
