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
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
BASELINE = "01_fabric_baseline.py"
DIVERGED_EXIT_CODE = 3  # local_utilities.DIVERGED_EXIT_CODE, not imported: that module imports torch (slow --help)


def parse_args(argv):
    """The runner's own options, and the rest of the command line, which goes to every script."""
    parser = argparse.ArgumentParser(
        description="Run the numbered scripts in turn; write OUT/results.jsonl, OUT/results.md (table) and "
        "OUT/results.png (chart), and print the ratios to 01_fabric_baseline.py.", allow_abbrev=False,
        epilog="Any other flag (e.g. --quick, --synthetic, --model vit_b_16, --max-steps 50) is passed to every "
        "script; relative paths in them are taken from the repository root.")
    parser.add_argument("--scripts", nargs="+", metavar="SCRIPT",
                        help="by number (01 04), file name or path; default: every numbered script next to benchmark.py")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output folder (default: results/)")
    parser.add_argument("--repeats", type=int, default=1, metavar="N",
                        help="run the scripts N times, taking turns, and report each script's median run (default 1)")
    parser.add_argument("--from-results", type=Path, metavar="FILE",
                        help="run nothing: tabulate and chart this JSON-lines file of records")
    args, script_args = parser.parse_known_args(argv)
    if any(arg == "--results" or arg.startswith("--results=") for arg in script_args):
        parser.error("the runner passes --results OUT/results.jsonl itself; choose the folder with --out")
    if args.from_results and (script_args or args.scripts):
        parser.error(f"--from-results runs no script; drop {shlex.join(script_args or ['--scripts'])}")
    return args, script_args


def find_scripts(selection):
    """The scripts to run: every numbered script in the repository, or those named by number, file name or path."""
    available = sorted(REPO.glob("[0-9][0-9]*_*.py"))
    chosen = []
    for entry in selection or [path.name for path in available]:
        matches = [path for path in available if entry in (path.name, path.stem) or path.name.startswith(entry + "_")]
        if not matches:  # any other script: a path from here or a file in the repository
            matches = [path.resolve() for path in (Path(entry), REPO / entry) if path.is_file()][:1]
        if not matches:
            sys.exit(f"error: no script matches {entry!r}; choose from {', '.join(p.name for p in available)}")
        chosen += matches
    return chosen


def load_records(path):
    """The records of a JSON-lines results file, one dict per non-empty line."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def median_runs(rows):
    """One row per script: its run with the median images/s (so the row's numbers belong together)."""
    by_script = {}
    for row in rows:
        by_script.setdefault(row["script"], []).append(row)
    summary = []
    for runs in by_script.values():
        crashed = [run for run in runs if run.get("crashed")]
        ranked = sorted(runs, key=lambda run: run["images_per_s"] or 0) if not crashed else crashed
        summary.append({**ranked[(len(ranked) - 1) // 2], "all_images_per_s": [run.get("images_per_s") for run in runs]})
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
    process = subprocess.Popen([sys.executable, str(script), *script_args, "--results", str(results_file)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
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
    runs = [script for _ in range(repeats) for script in scripts]  # taking turns: drift hits every script alike
    for number, script in enumerate(runs, 1):
        elapsed = time.perf_counter() - start
        left = f", about {clock(elapsed / (number - 1) * (len(runs) - number + 1))} left" if number > 1 else ""
        print(f"[{number}/{len(runs)}] {script.name}  (elapsed {clock(elapsed)}{left})", flush=True)
        script_start = time.perf_counter()
        rows.append(run_script(script, script_args, results_file))
        print(f"    -> {outcome(rows[-1])} after {clock(time.perf_counter() - script_start)}", flush=True)
    print(f"All {len(runs)} run(s) done in {clock(time.perf_counter() - start)}")
    return rows


def distinct(records, describe):
    """The different values of describe(record) over the records, joined by ' / '."""
    return " / ".join(dict.fromkeys(describe(record) for record in records)) or "unknown"


def hardware(records):
    return distinct(records, lambda r: f"{r['device_name']} x {r['world_size']} process(es)")


def package_versions(records):
    return distinct(records, lambda r: ", ".join(f"{name} {value}" for name, value in r["versions"].items()))


def cell(value, template="{:.2f}", scale=1):
    return "–" if value is None else template.format(value * scale)


def format_table(rows, comparisons, command):
    """results.md: a sentence of conditions, one table row per script, then hardware, versions and command."""
    records = [row for row in rows if not row.get("crashed")]
    finished = [r for r in records if not r["diverged"]] or records
    in_minutes = max((r["train_time_s"] for r in records), default=0) >= 120
    repeats = max(len(row.get("all_images_per_s", [None])) for row in rows)
    lines = [f"{len(rows)} script(s), each in its own process, trained {distinct(records, lambda r: r['model'])} on "
             f"{distinct(records, lambda r: r['data'])} data for {distinct(finished, lambda r: str(r['epochs']))} "
             f"epoch(s), {distinct(finished, lambda r: str(r['steps']))} steps, at batch size "
             f"{distinct(records, lambda r: str(r['batch_size']))} per device."
             + (" Accuracy on generated data means nothing and is left out." if any(r["data"] == "synthetic" for r in records)
                else "")
             + (f" Each script ran {repeats} times, taking turns; its row is the run with the median images/s, and the "
                "last column lists every run's images/s." if repeats > 1 else ""), ""]
    header = ["Script", "Model", "Precision in effect", "Matmul precision",
              f"Training time ({'min' if in_minutes else 's'})", "Images/s", "Time/step vs 01", "Data wait", "MFU",
              "Peak memory (GB)", "Memory vs 01", "Train acc. (%)", "Val acc. (%)", "Test acc. (%)", "Result"]
    table = []
    for row, ratio in zip(rows, comparisons):
        result = outcome(row) if outcome(row) == "ok" else f"**{outcome(row)}**"
        if row.get("crashed"):
            cells = [row["script"], *["–"] * 13, result]
        else:
            cells = [row["script"], row["model"], row["precision"], row["matmul_precision"],
                     cell(row["train_time_s"], scale=1 / 60 if in_minutes else 1, template="{:.1f}"),
                     cell(row["images_per_s"], "{:.1f}"), cell(ratio["time_per_step"], "{:.2f}x"),
                     cell(row["data_wait_share"], "{:.1%}"), cell(row.get("mfu"), "{:.1%}"),
                     cell(row["peak_memory_gb"]), cell(ratio["memory"], "{:.2f}x"),
                     *(cell(row[key], "{:.1f}", 100) for key in ("train_acc", "val_acc", "test_acc")), result]
        table.append(cells + [", ".join(cell(value, "{:.1f}") for value in row.get("all_images_per_s", []))])
    header.append("Images/s of every run")
    shown = [column for column in range(len(header))  # a column with no value in any row says nothing
             if column == 0 or any(cells[column] not in ("–", "") for cells in table)
             and (column < len(header) - 1 or repeats > 1)]
    lines += ["| " + " | ".join(header[column] for column in shown) + " |",
              "|" + "|".join("---" if column in (0, 1, 2, 3, 14, 15) else "---:" for column in shown) + "|"]
    lines += ["| " + " | ".join(cells[column] for column in shown) + " |" for cells in table]
    lines += ["", f"Hardware: {hardware(records)}.", f"Versions: {package_versions(records)}."]
    if records:
        lines.append(f"Peak memory is what each script measured, e.g. {records[0]['script']}: {records[0]['memory_measure']}.")
    return "\n".join(lines + ["", "Produced by:", "", "```", command, "```", ""])


def baseline(rows):
    """The last finished (neither crashed nor diverged) 01_fabric_baseline.py record, or None."""
    return next((row for row in reversed(rows) if row["script"] == BASELINE and outcome(row) == "ok"), None)


def ratios(rows):
    """Per row, against the 01 baseline: time per step and peak memory ratios, test-accuracy change in points."""
    base = baseline(rows)
    comparisons = []
    for row in rows:
        entry = {"script": row["script"], "time_per_step": None, "memory": None, "test_acc_points": None,
                 "data_wait_share": row.get("data_wait_share")}
        if base and outcome(row) == "ok":
            entry["time_per_step"] = base["images_per_s"] / row["images_per_s"] if row["images_per_s"] else None
            entry["memory"] = row["peak_memory_gb"] / base["peak_memory_gb"] if base["peak_memory_gb"] else None
            if row["test_acc"] is not None and base["test_acc"] is not None:
                entry["test_acc_points"] = (row["test_acc"] - base["test_acc"]) * 100
        comparisons.append(entry)
    return comparisons


def print_ratios(rows, comparisons):
    """The ratios to 01 and the data-wait share of every script, as a small terminal table."""
    print(f"\nCompared with {BASELINE} (time per step = 01's images/s / the script's images/s; under 1x is faster):")
    print(f"  {'Script':<28}{'Time/step':>10}{'Peak memory':>13}{'Test acc.':>11}{'Data wait':>11}")
    for row, ratio in zip(rows, comparisons):
        columns = ([cell(ratio["time_per_step"], "{:.2f}x"), cell(ratio["memory"], "{:.2f}x"),
                    cell(ratio["test_acc_points"], "{:+.1f} pp")] if outcome(row) == "ok" else [outcome(row), "", ""])
        print(f"  {row['script']:<28}{columns[0]:>10}{columns[1]:>13}{columns[2]:>11}"
              f"{cell(ratio['data_wait_share'], '{:.1%}'):>11}")
    if baseline(rows) is None:
        print(f"  (no finished {BASELINE} record, so no ratios)")
    print("  A script that waits for data a large share of its step time is data-bound: precision cannot speed it up.")


def plot(rows, path):
    """results.png: training time, peak memory and test accuracy per script; 01 highlighted, ratios on the bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    records, base = [row for row in rows if not row.get("crashed")], baseline(rows)
    in_minutes = max((r["train_time_s"] for r in records), default=0) >= 120
    panels = [("train_time_s", f"Training time ({'min' if in_minutes else 's'})", 1 / 60 if in_minutes else 1),
              ("peak_memory_gb", "Peak memory (GB)", 1), ("test_acc", "Test accuracy (%)", 100)]
    figure, axes = plt.subplots(1, 3, figsize=(16, 1.6 + 0.55 * len(rows)), sharey=True, squeeze=True)
    for axis, (key, label, scale) in zip(axes, panels):
        values = [row[key] * scale if outcome(row) == "ok" and row[key] is not None else None for row in rows]
        top = max([value for value in values if value is not None], default=1) or 1
        for y, (row, value) in enumerate(zip(rows, values)):
            if value is None:
                why = outcome(row) if outcome(row) != "ok" else "not measured"
                axis.text(0, y, f" {why}", va="center", color="tab:red" if why != "not measured" else "gray", style="italic")
                continue
            axis.barh(y, value, color="tab:orange" if row["script"] == BASELINE else "tab:blue")
            note = ""
            if base and key == "test_acc":
                note = f"  ({(row[key] - base[key]) * 100:+.1f} pp)"
            elif base and base[key]:
                note = f"  ({row[key] / base[key]:.2f}x)"
            axis.text(value, y, f" {value:.3g}{note}", va="center", fontsize=9)
        axis.set_xlim(0, top * 1.45)
        axis.set_title(label)
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [row["script"] for row in rows])
    axes[0].invert_yaxis()
    figure.suptitle(f"{distinct(records, lambda r: r['model'])} on {distinct(records, lambda r: r['data'])} data  |  "
                    f"{hardware(records)}\n{package_versions(records)}", fontsize=10)
    figure.legend(handles=[Patch(color="tab:orange", label=f"{BASELINE} (baseline; ratios are to it)"),
                           Patch(color="tab:blue", label="other scripts")], loc="lower center", ncol=2, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    """Run (or load) the records, write results.md and results.png, print the ratios; 1 if a script crashed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, script_args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_results:
        rows = load_records(args.from_results)
    else:
        rows = run_all(find_scripts(args.scripts), script_args, (args.out / "results.jsonl").resolve(), args.repeats)
    rows = [drop_synthetic_accuracy(row) for row in median_runs(rows)]
    comparisons = ratios(rows)
    command = shlex.join(["python", "benchmark.py", *argv])
    if args.from_results:  # the records' own command, saved beside them by the run that made them
        saved = args.from_results.parent / "command.txt"
        command = f"{saved.read_text().strip()}\n# tabulated again by: {command}" if saved.exists() else command
    else:
        (args.out / "command.txt").write_text(command + "\n")
    (args.out / "results.md").write_text(format_table(rows, comparisons, command))
    plot(rows, args.out / "results.png")
    print_ratios(rows, comparisons)
    print(f"\nWrote {args.out / 'results.md'} and {args.out / 'results.png'}")
    crashed = [row["script"] for row in rows if row.get("crashed")]
    if crashed:
        print(f"error: {len(crashed)} script(s) crashed: {', '.join(crashed)}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
