"""Run the numbered finetuning scripts one after another and compare them in a table, a chart and ratios.

    python benchmark.py --synthetic --model vit_b_16 --max-steps 50   # every script: speed and memory
    python benchmark.py --scripts 01 04 --quick                       # two scripts, about a minute on a CPU
    python benchmark.py --from-results results/results.jsonl          # run nothing; redo table and chart

Flags the runner does not know go unchanged to every script (see `python 01_fabric_baseline.py --help`).
Each script runs in its own process, from the repository root, so each has fresh memory statistics.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
BASELINE = "01_fabric_baseline.py"
DIVERGED_EXIT_CODE = (
    3  # local_utilities.DIVERGED_EXIT_CODE, not imported: that module imports torch (slow --help)
)
# Peak RSS growth on a CPU moved by up to 0.07 GB between identical runs (docs/results/): a smaller baseline makes a
# memory ratio noise. A record may state its own resolution as memory_resolution_gb.
MEMORY_RESOLUTION_GB = 0.1
BELOW_RESOLUTION = "below resolution"
RECORD_KEYS = (
    "script",
    "precision",
    "device_name",
    "world_size",
    "model",
    "data",
    "epochs",
    "batch_size",
    "steps",
    "matmul_precision",
    "train_time_s",
    "images_per_s",
    "data_wait_share",
    "peak_memory_gb",
    "memory_measure",
    "train_acc",
    "val_acc",
    "test_acc",
    "diverged",
    "versions",
)  # what the runner reads
NUMBER_KEYS = (
    "world_size",
    "epochs",
    "batch_size",
    "steps",
    "train_time_s",
    "images_per_s",
    "data_wait_share",
    "peak_memory_gb",
    "train_acc",
    "val_acc",
    "test_acc",
)


def parse_args(argv):
    """The runner's own options, and the rest of the command line, which goes to every script."""
    parser = argparse.ArgumentParser(
        description="Run the numbered scripts in turn; write OUT/results.jsonl, OUT/results.md (table) and "
        "OUT/results.png (chart), and print the ratios to 01_fabric_baseline.py.",
        allow_abbrev=False,
        epilog="Any other flag (e.g. --quick, --synthetic, --model vit_b_16, --max-steps 50) is passed to every "
        "script; relative paths in them are taken from the repository root.",
    )
    parser.add_argument(
        "--scripts",
        nargs="+",
        metavar="SCRIPT",
        help="by number (01 04), file name or path; default: every numbered script next to benchmark.py",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="output folder (default: results/)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="run the scripts N times, taking turns, and report each script's median run (default 1)",
    )
    parser.add_argument(
        "--from-results",
        type=Path,
        metavar="FILE",
        help="run nothing: tabulate and chart this JSON-lines file of records",
    )
    args, script_args = parser.parse_known_args(argv)
    if any(arg == "--results" or arg.startswith("--results=") for arg in script_args):
        parser.error(
            "the runner passes --results OUT/results.jsonl itself; choose the folder with --out"
        )
    if args.from_results and (script_args or args.scripts):
        parser.error(
            f"--from-results runs no script; drop {shlex.join(script_args or ['--scripts'])}"
        )
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, not {args.repeats}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(
            f"--out {args.out} is a file; give a folder for results.jsonl, results.md and results.png"
        )
    if (
        args.from_results
    ):  # read here, so that a bad file stops the runner with one sentence, like a bad flag
        try:
            args.records = read_results(args.from_results)
        except ValueError as error:
            parser.error(str(error))
    return args, script_args


def find_scripts(selection):
    """The scripts to run: every numbered script in the repository, or those named by number, file name or path."""
    available = sorted(REPO.glob("[0-9][0-9]*_*.py"))
    chosen = []
    for entry in selection or [path.name for path in available]:
        matches = [
            path
            for path in available
            if entry in (path.name, path.stem) or path.name.startswith(entry + "_")
        ]
        if not matches:  # any other script: a path from here or a file in the repository
            matches = [path.resolve() for path in (Path(entry), REPO / entry) if path.is_file()][:1]
        if not matches:
            sys.exit(
                f"error: no script matches {entry!r}; choose from {', '.join(p.name for p in available)}"
            )
        chosen += matches
    return chosen


def load_records(path):
    """The records of a JSON-lines results file, one dict per non-empty line."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_results(path):
    """The records of a --from-results file; a ValueError saying what is wrong if they are not the scripts' records."""
    if not path.is_file():
        raise ValueError(f"--from-results {path}: no such file")
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(
                f"{path} line {number} is not JSON: --from-results takes the JSON-lines file the scripts "
                "write with --results"
            ) from None
        missing = (
            [key for key in RECORD_KEYS if key not in record]
            if isinstance(record, dict)
            else ["every key"]
        )
        if missing:
            raise ValueError(
                f"{path} line {number} is not a results record: it lacks {', '.join(missing)}"
            )
        wrong = [
            key for key in NUMBER_KEYS if not isinstance(record[key], (int, float, type(None)))
        ]
        if wrong:
            raise ValueError(
                f"{path} line {number} is not a results record: {', '.join(wrong)} should be numbers"
            )
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def median_runs(rows):
    """One row per script: its run with the median images/s (so the row's numbers belong together)."""
    by_script = {}
    for row in rows:
        by_script.setdefault(row["script"], []).append(row)
    summary = []
    for runs in by_script.values():
        crashed = [run for run in runs if run.get("crashed")]
        ranked = sorted(runs, key=lambda run: run["images_per_s"] or 0) if not crashed else crashed
        summary.append(
            {
                **ranked[(len(ranked) - 1) // 2],
                "all_images_per_s": [run.get("images_per_s") for run in runs],
            }
        )
    return summary


def drop_synthetic_accuracy(row):
    """Accuracy on --synthetic data (a few random images, memorised) means nothing: leave it out of the comparison."""
    if row.get("data") != "synthetic":
        return row
    return {**row, "train_acc": None, "val_acc": None, "test_acc": None}


def outcome(row):
    """'ok', 'diverged', or 'crashed (exit N)' for a record or a crashed row."""
    if row.get("crashed"):
        no_record = ", no record" if row["exit_code"] in (0, DIVERGED_EXIT_CODE) else ""
        return f"crashed (exit {row['exit_code']}{no_record})"
    return "diverged" if row["diverged"] else "ok"


def clock(seconds):
    return time.strftime("%H:%M:%S" if seconds >= 3600 else "%M:%S", time.gmtime(seconds))


def run_script(script, script_args, results_file):
    """Run one script in its own process, echoing its output; return its record, or a crashed row."""
    before = len(load_records(results_file)) if results_file.exists() else 0
    process = subprocess.Popen(
        [sys.executable, str(script), *script_args, "--results", str(results_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in process.stdout:
        if line.strip():
            print("    " + line.rstrip(), flush=True)
    exit_code = process.wait()
    new_records = load_records(results_file)[before:] if results_file.exists() else []
    if exit_code in (0, DIVERGED_EXIT_CODE) and new_records:
        return new_records[-1]
    return {"script": script.name, "crashed": True, "exit_code": exit_code}


def run_all(scripts, script_args, results_file, repeats=1):
    """Run the scripts in turn, `repeats` rounds, with progress and the time left; return one row per run."""
    results_file.unlink(missing_ok=True)
    rows, start = [], time.perf_counter()
    runs = [
        script for _ in range(repeats) for script in scripts
    ]  # taking turns: drift hits every script alike
    for number, script in enumerate(runs, 1):
        elapsed = time.perf_counter() - start
        left = (
            f"; about {clock(elapsed / (number - 1) * (len(runs) - number + 1))} left if the rest run as fast as "
            "the finished ones"
            if number > 1
            else ""
        )  # scripts differ in speed many times over: only a guess
        print(f"[{number}/{len(runs)}] {script.name}  (elapsed {clock(elapsed)}{left})", flush=True)
        script_start = time.perf_counter()
        rows.append(run_script(script, script_args, results_file))
        print(
            f"    -> {outcome(rows[-1])} after {clock(time.perf_counter() - script_start)}",
            flush=True,
        )
    print(f"All {len(runs)} run(s) done in {clock(time.perf_counter() - start)}")
    return rows


def distinct(records, describe):
    """The different values of describe(record) over the records, joined by ' / '."""
    return " / ".join(dict.fromkeys(describe(record) for record in records)) or "unknown"


def hardware(records):
    return distinct(records, lambda r: f"{r['device_name']} x {r['world_size']} process(es)")


def package_versions(records):
    return distinct(
        records, lambda r: ", ".join(f"{name} {value}" for name, value in r["versions"].items())
    )


def readable(value):
    """A number with enough digits to read at any size (1391.5, 2.74, 0.0213); '–' for none."""
    if value is None:
        return "–"
    return f"{value:.1f}" if value >= 10 else f"{value:#.3g}"


def cell(value, template="{:.2f}", scale=1):
    """A formatted number; '–' for none; a note such as BELOW_RESOLUTION as it is."""
    if value is None:
        return "–"
    return value if isinstance(value, str) else template.format(value * scale)


def seconds_per_step(row):
    """Steady-state seconds per optimizer step (after warm-up): the record's own, or from its images/s."""
    if row.get("seconds_per_step") is not None:
        return row["seconds_per_step"]
    return (
        row["batch_size"] * row["world_size"] / row["images_per_s"]
        if row.get("images_per_s")
        else None
    )


def memory_resolution(record):
    return record.get("memory_resolution_gb") or MEMORY_RESOLUTION_GB


def last_finished(rows, name_start):
    """The last finished (neither crashed nor diverged) record whose script name starts with name_start, or None."""
    return next(
        (
            row
            for row in reversed(rows)
            if row["script"].startswith(name_start) and outcome(row) == "ok"
        ),
        None,
    )


def baseline(rows):
    return last_finished(rows, BASELINE)


def parent_number(script):
    """'04' for a lettered branch such as 04b_fabric_bf16true_kahan.py, None for any other script."""
    match = re.match(r"(\d\d)[a-z]+_", script)
    return match and match.group(1)


def compare(row, base):
    """Time per step and peak memory of row as multiples of base's (None where one is missing)."""
    if base is None or outcome(row) != "ok":
        return None, None
    step, base_step = seconds_per_step(row), seconds_per_step(base)
    memory, base_memory = row["peak_memory_gb"], base["peak_memory_gb"]
    if memory is None or base_memory is None:
        memory_ratio = None
    elif base_memory < memory_resolution(base):  # dividing by a number this small gives noise
        memory_ratio = BELOW_RESOLUTION
    else:
        memory_ratio = memory / base_memory
    return (step / base_step if step and base_step else None), memory_ratio


def ratios(rows):
    """Per row: time per step and peak memory as multiples of 01's, test-accuracy change in points; for a lettered
    branch (04b), also as multiples of its parent's (04). The table, the chart and the terminal all show these."""
    base = baseline(rows)
    comparisons = []
    for row in rows:
        parent = parent_number(row["script"])
        entry = {
            "script": row["script"],
            "data_wait_share": row.get("data_wait_share"),
            "test_acc_points": None,
            "parent": parent,
        }
        entry["time_per_step"], entry["memory"] = compare(row, base)
        parent_record = parent and last_finished(rows, parent + "_")
        entry["parent_time_per_step"], entry["parent_memory"] = compare(row, parent_record)
        if (
            base
            and outcome(row) == "ok"
            and row["test_acc"] is not None
            and base["test_acc"] is not None
        ):
            entry["test_acc_points"] = (row["test_acc"] - base["test_acc"]) * 100
        comparisons.append(entry)
    return comparisons


def footnotes(records, comparisons):
    """The sentences that explain a parent comparison or a ratio left out as below resolution, where there is one."""
    notes = []
    if any(ratio["parent"] for ratio in comparisons):
        notes.append(
            "A lettered script (such as 04b) is also compared with its parent, the script of its number (04), "
            'as "vs parent" or "vs 04"; – where the parent diverged, crashed or did not run.'
        )
    if any(BELOW_RESOLUTION in (ratio["memory"], ratio["parent_memory"]) for ratio in comparisons):
        notes.append(
            f'"{BELOW_RESOLUTION}": the peak memory compared with is under the memory measurement\'s '
            f"resolution ({distinct(records, lambda r: f'{memory_resolution(r):g}')} GB), so a ratio to it "
            "would be noise."
        )
    return notes


def format_table(rows, comparisons, command):
    """results.md: a sentence of conditions, one table row per script, then hardware, versions and command."""
    records = [row for row in rows if not row.get("crashed")]
    finished = [r for r in records if not r["diverged"]] or records
    repeats = max(len(row.get("all_images_per_s", [None])) for row in rows)
    lines = [
        f"{len(rows)} script(s), each in its own process, trained {distinct(records, lambda r: r['model'])} on "
        f"{distinct(records, lambda r: r['data'])} data for {distinct(finished, lambda r: str(r['epochs']))} "
        f"epoch(s), {distinct(finished, lambda r: str(r['steps']))} steps, at batch size "
        f"{distinct(records, lambda r: str(r['batch_size']))} per device. Time/step is the mean time of an "
        "optimizer step after the warm-up steps; every ratio compares it, while the training time also counts "
        "warm-up and validation."
        + (
            " Accuracy on generated data means nothing and is left out."
            if any(r["data"] == "synthetic" for r in records)
            else ""
        )
        + (
            f" Each script ran {repeats} times, taking turns; its row is the run with the median images/s, and the "
            "last column lists every run's images/s."
            if repeats > 1
            else ""
        ),
        "",
    ]
    table = []
    for row, ratio in zip(rows, comparisons):
        cells = {"Script": row["script"]}
        if not row.get("crashed"):
            cells.update(
                {
                    "Model": row["model"],
                    "Precision in effect": row["precision"],
                    "Matmul precision": row["matmul_precision"],
                    "Training time (s)": readable(row["train_time_s"]),
                    "Images/s": readable(row["images_per_s"]),
                    "Time/step (s)": readable(seconds_per_step(row)),
                    "Time/step vs 01": cell(ratio["time_per_step"], "{:.2f}x"),
                    "Data wait": cell(row["data_wait_share"], "{:.1%}"),
                    "MFU": cell(row.get("mfu"), "{:.1%}"),
                    "Peak memory (GB)": cell(row["peak_memory_gb"]),
                    "Memory vs 01": cell(ratio["memory"], "{:.2f}x"),
                    "Time/step vs parent": cell(ratio["parent_time_per_step"], "{:.2f}x"),
                    "Memory vs parent": cell(ratio["parent_memory"], "{:.2f}x"),
                    **{
                        name: cell(row[key], "{:.1f}", 100)
                        for name, key in (
                            ("Train acc. (%)", "train_acc"),
                            ("Val acc. (%)", "val_acc"),
                            ("Test acc. (%)", "test_acc"),
                        )
                    },
                }
            )
        cells["Result"] = outcome(row) if outcome(row) == "ok" else f"**{outcome(row)}**"
        if repeats > 1:
            cells["Images/s of every run"] = ", ".join(
                readable(value) for value in row.get("all_images_per_s", [])
            )
        table.append(cells)
    header = [
        "Script",
        "Model",
        "Precision in effect",
        "Matmul precision",
        "Training time (s)",
        "Images/s",
        "Time/step (s)",
        "Time/step vs 01",
        "Data wait",
        "MFU",
        "Peak memory (GB)",
        "Memory vs 01",
        "Time/step vs parent",
        "Memory vs parent",
        "Train acc. (%)",
        "Val acc. (%)",
        "Test acc. (%)",
        "Result",
        "Images/s of every run",
    ]
    header = [
        name
        for name in header  # a column with no value in any row says nothing
        if name == "Script" or any(cells.get(name, "–") not in ("–", "") for cells in table)
    ]
    text_columns = (
        "Script",
        "Model",
        "Precision in effect",
        "Matmul precision",
        "Result",
        "Images/s of every run",
    )
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if name in text_columns else "---:" for name in header) + "|",
    ]
    lines += ["| " + " | ".join(cells.get(name, "–") for name in header) + " |" for cells in table]
    lines += [
        "",
        *footnotes(records, comparisons),
        f"Hardware: {hardware(records)}.",
        f"Versions: {package_versions(records)}.",
    ]
    if records:
        lines.append(
            f"Peak memory is what each script measured, e.g. {records[0]['script']}: {records[0]['memory_measure']}."
        )
    return "\n".join(lines + ["", "Produced by:", "", "```", command, "```", ""])


def print_ratios(rows, comparisons):
    """The ratios to 01 (and a branch's to its parent) and the data-wait share of every script, for the terminal."""
    width = max(len(row["script"]) for row in rows) + 2
    print(
        f"\nCompared with {BASELINE}: time per step in steady state (after warm-up) and peak memory as multiples of "
        "01's (under 1x is less), test accuracy in percentage points:"
    )
    print(
        f"  {'Script':<{width}}{'Time/step (s)':>14}{'vs 01':>8}{'Memory vs 01':>18}{'Test acc.':>11}"
        f"{'Data wait':>11}"
    )
    for row, ratio in zip(rows, comparisons):
        if outcome(row) != "ok":
            print(f"  {row['script']:<{width}}{outcome(row):>14}")
            continue
        print(
            f"  {row['script']:<{width}}{readable(seconds_per_step(row)):>14}"
            f"{cell(ratio['time_per_step'], '{:.2f}x'):>8}{cell(ratio['memory'], '{:.2f}x'):>18}"
            f"{cell(ratio['test_acc_points'], '{:+.1f} pp'):>11}{cell(ratio['data_wait_share'], '{:.1%}'):>11}"
        )
        if ratio["parent"]:
            print(
                f"  {'  vs ' + ratio['parent']:<{width}}{'':>14}{cell(ratio['parent_time_per_step'], '{:.2f}x'):>8}"
                f"{cell(ratio['parent_memory'], '{:.2f}x'):>18}"
            )
    if baseline(rows) is None:
        print(f"  (no finished {BASELINE} record, so no ratios to it)")
    for note in footnotes([row for row in rows if not row.get("crashed")], comparisons):
        print("  " + note)
    print(
        "  A script that waits for data a large share of its step time is data-bound: precision cannot speed it up."
    )


def bar(value, shown, ratios):
    """A chart bar: its length and the text beside it, the value then its ratios in brackets; a note if not measured."""
    if value is None:
        return None, "not measured"
    ratios = list(
        dict.fromkeys(ratio for ratio in ratios if ratio != "–")
    )  # "below resolution" once is enough
    return value, f"{shown}  ({', '.join(ratios)})" if ratios else shown


def chart_panels(rows, comparisons):
    """What results.png draws: per panel a title and, per row, a bar (value and text) or a note. The ratios are the
    table's; a panel with nothing measured (accuracy on generated data) is left out."""

    def vs_parent(ratio, key):
        shown = cell(ratio[key], "{:.2f}x")
        return (
            [shown if shown == BELOW_RESOLUTION else f"{shown} vs {ratio['parent']}"]
            if ratio["parent"]
            else []
        )

    steps, memory, accuracy = [], [], []
    for row, ratio in zip(rows, comparisons):
        if outcome(row) != "ok":
            for bars in (steps, memory, accuracy):
                bars.append((None, outcome(row)))
            continue
        step, peak, test = seconds_per_step(row), row["peak_memory_gb"], row["test_acc"]
        steps.append(
            bar(
                step,
                readable(step),
                [
                    cell(ratio["time_per_step"], "{:.2f}x"),
                    *vs_parent(ratio, "parent_time_per_step"),
                ],
            )
        )
        memory.append(
            bar(
                peak,
                cell(peak),
                [cell(ratio["memory"], "{:.2f}x"), *vs_parent(ratio, "parent_memory")],
            )
        )
        accuracy.append(
            bar(
                None if test is None else test * 100,
                cell(test, "{:.1f}", 100),
                [cell(ratio["test_acc_points"], "{:+.1f} pp")],
            )
        )
    panels = [
        ("Time per step, steady state (s)", steps),
        ("Peak memory (GB)", memory),
        ("Test accuracy (%)", accuracy),
    ]
    drawn = [(title, bars) for title, bars in panels if any(value is not None for value, _ in bars)]
    return drawn or panels[:1]  # every script crashed: one panel that says so


def plot(rows, comparisons, path):
    """results.png: time per step, peak memory and test accuracy per script; 01 highlighted, ratios on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    records, panels = (
        [row for row in rows if not row.get("crashed")],
        chart_panels(rows, comparisons),
    )
    figure, axes = plt.subplots(
        1,
        len(panels),
        figsize=(5.6 * len(panels), 1.6 + 0.55 * len(rows)),
        sharey=True,
        squeeze=False,
    )
    for axis, (title, bars) in zip(axes[0], panels):
        for y, (row, (value, text)) in enumerate(zip(rows, bars)):
            if value is None:
                axis.text(
                    0,
                    y,
                    f" {text}",
                    va="center",
                    style="italic",
                    color="gray" if text == "not measured" else "tab:red",
                )
                continue
            axis.barh(y, value, color="tab:orange" if row["script"] == BASELINE else "tab:blue")
            axis.text(value, y, f" {text}", va="center", fontsize=9)
        axis.set_xlim(
            0, max([value for value, _ in bars if value is not None], default=1) * 1.8
        )  # room for the text
        axis.set_title(title)
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(rows)), [row["script"] for row in rows])
    axes[0][0].invert_yaxis()
    figure.suptitle(
        f"{distinct(records, lambda r: r['model'])} on {distinct(records, lambda r: r['data'])} data  |  "
        f"{hardware(records)}\n{package_versions(records)}",
        fontsize=10,
    )
    parents = (
        ", 'vs 04' to a lettered script's parent"
        if any(ratio["parent"] for ratio in comparisons)
        else ""
    )
    legend = [
        Patch(
            color="tab:orange",
            label=f"{BASELINE}, the baseline: ratios in brackets are to it{parents}",
        ),
        Patch(color="tab:blue", label="other scripts"),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=2, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    """Run (or load) the records, write results.md and results.png, print the ratios; 1 if a script crashed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, script_args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        rows = args.records
    else:
        rows = run_all(
            find_scripts(args.scripts),
            script_args,
            (args.out / "results.jsonl").resolve(),
            args.repeats,
        )
    rows = [drop_synthetic_accuracy(row) for row in median_runs(rows)]
    comparisons = ratios(rows)
    command = shlex.join(["python", "benchmark.py", *argv])
    if args.from_results:  # the records' own command, saved beside them by the run that made them
        saved = args.from_results.parent / "command.txt"
        command = (
            f"{saved.read_text().strip()}\n# tabulated again by: {command}"
            if saved.exists()
            else command
        )
    else:
        (args.out / "command.txt").write_text(command + "\n")
    (args.out / "results.md").write_text(format_table(rows, comparisons, command))
    plot(rows, comparisons, args.out / "results.png")
    print_ratios(rows, comparisons)
    print(f"\nWrote {args.out / 'results.md'} and {args.out / 'results.png'}")
    crashed = [row["script"] for row in rows if row.get("crashed")]
    if crashed:
        print(f"error: {len(crashed)} script(s) crashed: {', '.join(crashed)}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
