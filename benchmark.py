"""Run the numbered scripts in turn; compare them in a table, a chart and ratios to 01.

Other flags go to every script, which runs in its own process in the folder you are in:
`python benchmark.py --seeds 5 --scripts 01 04 --quick` compares accuracy over five seeds.
"""

import argparse
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
BASELINE = "01_fabric_baseline.py"
DIVERGED_EXIT_CODE = 3  # nan_check's; not imported, as that module imports torch
MAX_SEED = 2**32 - 1  # seed_everything's (lightning/fabric/utilities/seed.py), from 0; flags' too
SHARED_PROBLEM_EXIT_CODE = 2  # the scripts' status for an InputError: flags, data, weights
SHARED_PROBLEM = "every script would stop the same way; fix that and run again"
# Peak RSS on a CPU moved by 0.07 GB between identical runs: a ratio to less would be noise
MEMORY_RESOLUTION_GB = 0.1
BELOW_RESOLUTION = "below resolution"
# Runs that agree on these are repeats of one setting; only runs of one setting are compared.
SETTING_KEYS = (
    "model",
    "data",
    "batch_size",
    "epochs",
    "steps",
    "world_size",
    "device_name",
    "matmul_precision",
    "learning_rate",
)
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
# what the runner reads of a record
RECORD_KEYS = (
    "script",
    "precision",
    "device_name",
    *NUMBER_KEYS,
    "model",
    "data",
    "diverged",
    "matmul_precision",
    "memory_measure",
    "versions",
)
SPEED = [  # the terminal's first table
    "Script",
    "First step (s)",
    "Time/step (s)",
    "Time/step vs 01",
    "Memory vs 01",
    "Time/step vs parent",
    "Memory vs parent",
    "Pays off vs parent after",
    "Data wait",
]
ACCURACY = [  # the terminal's second table
    "Script",
    "Test acc. (%)",
    "Test acc. vs 01 (points)",
    "SD over seeds (points)",
    "Min–max over seeds (%)",
    "Vs 01, paired by seed",
    "Vs parent, paired by seed",
    "Result",
]
COLUMNS = [  # results.md: every column
    "Script",
    "Model",
    "Precision in effect",
    "Matmul precision",
    "Training time (s)",
    "Images/s",
    "First step (s)",
    "Time/step (s)",
    "Time/step vs 01",
    "Data wait",
    "MFU",
    "Peak memory (GB)",
    "Memory vs 01",
    "Time/step vs parent",
    "Memory vs parent",
    "Pays off vs parent after",
    "Train acc. (%)",
    "Val acc. (%)",
    *ACCURACY[1:],
]
TEXT = [  # left-aligned: names, verdicts, results
    "Script",
    "Model",
    "Precision in effect",
    "Matmul precision",
    "Vs 01, paired by seed",
    "Vs parent, paired by seed",
    "Result",
]
CHART = [  # panel title, record key, scale, the table columns of the value and its ratio to 01
    ("Time per step, steady state (s)", "seconds_per_step", 1, "Time/step (s)", "Time/step vs 01"),
    ("Peak memory (GB)", "peak_memory_gb", 1, "Peak memory (GB)", "Memory vs 01"),
    ("Test accuracy (%)", "test_acc", 100, "Test acc. (%)", "Test acc. vs 01 (points)"),
]
REPEATED = "Several runs of a script: its run of median images/s, and its mean accuracy."
PARENT = "vs parent: a lettered script (04b) against its number (04); pays off after: the steps "
PARENT += "its faster steps take to repay its slower first step (compilation, for 04c)."


def parse_args(argv):
    """The runner's options, and the scripts' flags. Errors: exits 2 with one sentence."""
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    parser.add_argument(
        "--scripts", nargs="+", metavar="SCRIPT", help="by number (01 04), file name or path"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="folder for results.jsonl, .md, .png"
    )
    parser.add_argument(
        "--append", action="store_true", help="add to the records in OUT/results.jsonl"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, metavar="N", help="N runs each; tabulate the median"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="SEED", help="N (seeds 1 to N) or a list of seeds"
    )
    parser.add_argument(
        "--from-results", type=Path, metavar="FILE", help="run nothing; tabulate FILE's records"
    )
    args, script_args = parser.parse_known_args(argv)
    seeds = args.seeds or []
    wrong = [seed for seed in seeds if seed > MAX_SEED or (len(seeds) > 1 and seed < 0)]
    if wrong:
        parser.error(f"--seeds: a seed is a whole number from 0 to {MAX_SEED}; got {wrong[0]}")
    if args.seeds and len(args.seeds) == 1:  # a number of seeds
        args.seeds = list(range(1, args.seeds[0] + 1))
    flags = [arg.split("=")[0] for arg in script_args]
    runs = bool(script_args or args.scripts or args.seeds or args.append or args.repeats != 1)
    results = args.out / "results.jsonl"
    if "--results" in flags or (args.seeds and "--seed" in flags):
        parser.error("the runner passes --results (and, with --seeds, --seed) itself; drop it")
    if args.from_results and runs:
        parser.error("--from-results runs no script; drop the other flags but --out")
    if args.seeds == [] or args.repeats < 1 or (args.seeds and args.repeats > 1):
        parser.error("give --repeats N or --seeds N (one of them), N at least 1")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder for results.jsonl, .md and .png")
    if results.is_file() and results.stat().st_size and not (args.append or args.from_results):
        parser.error(f"{results} holds earlier records; add --append to add to them")
    return args, script_args


def find_scripts(selection):
    """The numbered scripts, or those named by number, file name or path. Errors: ValueError."""
    available = sorted(REPO.glob("[0-9][0-9]*_*.py"))
    chosen = []
    for entry in selection or [path.name for path in available]:
        matches = [path for path in available if entry in (path.name, path.stem)]
        matches = matches or [path for path in available if path.name.startswith(entry + "_")]
        if not matches and Path(entry).is_file():  # any other script, from the folder you are in
            matches = [Path(entry).resolve()]
        if not matches:
            names = ", ".join(path.name for path in available)
            raise ValueError(f"no script matches {entry!r}; choose from {names}")
        chosen += matches
    return chosen


def read_results(path, offset=0):
    """The records in a JSON-lines file after offset bytes, and a sentence per line skipped as
    not JSON (a run killed while writing). Errors: ValueError for JSON that is no record."""
    if not path.is_file():
        return [], []
    lines = path.read_bytes()[offset:].decode(errors="replace").splitlines()
    records, skipped = [], []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if line.strip():
                skipped.append(f"{path} line {number} is not a whole JSON record; skipped it")
            continue
        missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
        numbers = (int, float, type(None))
        wrong = [key for key in NUMBER_KEYS if not missing and not isinstance(record[key], numbers)]
        if missing or wrong:
            problem = f"it lacks {', '.join(missing)}" if missing else f"{wrong} are no numbers"
            raise ValueError(f"{path} line {number} is not a results record: {problem}")
        records.append(record)
    return records, skipped


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `docker stop`, a scheduler's time limit) stops the runner as Ctrl-C does;
    unlike a terminal's Ctrl-C, it reaches the runner alone, so the running script must be told."""


def terminate(signum, frame):
    """The runner's SIGTERM handler: raise Terminated wherever the runner is."""
    raise Terminated


def run_script(script, script_args, results_file):
    """Run a script, echoing its output: its record, or a crashed row with its reason (the last
    "error: " line). Errors: KeyboardInterrupt (Ctrl-C, or Terminated) once the script stopped:
    sent SIGTERM if the runner alone got it, and killed if it still runs after 10 s."""
    offset = results_file.stat().st_size if results_file.exists() else 0
    command = [sys.executable, str(script), *script_args, "--results", str(results_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    reason, last_line = None, "no output"
    try:
        for line in process.stdout:
            line = line.decode(errors="replace").rstrip()
            print(f"    {line}", flush=True)
            last_line = line.strip() or last_line
            if "error: " in line:  # the scripts' "error: ..." and argparse's "x.py: error: ..."
                reason = line[line.index("error: ") :]
        exit_code = process.wait()
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, Terminated):  # a terminal's Ctrl-C reaches the script itself
            process.terminate()  # which the scripts take as Ctrl-C
        try:
            process.wait(timeout=10)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            process.kill()
            process.wait()
        raise
    records = read_results(results_file, offset)[0]
    if exit_code in (0, DIVERGED_EXIT_CODE) and records:
        return records[-1]
    reason = reason or last_line
    return {"script": script.name, "crashed": True, "exit_code": exit_code, "reason": reason}


def run_all(runs, script_args, results_file):
    """Run each (script, seed or None for its own) in turn; stop after an exit status 2. Returns
    a record or crashed row per run. Errors: Ctrl-C exits 130 with one line."""
    rows, start = [], time.perf_counter()
    for number, (script, seed) in enumerate(runs, 1):
        elapsed = time.perf_counter() - start
        seed_args = ["--seed", str(seed)] if seed is not None else []
        label = " ".join([script.name, *seed_args])
        left = ""
        if number > 1:  # scripts differ in speed many times over: only a guess
            left = clock(elapsed / (number - 1) * (len(runs) - number + 1))
            left = f"; about {left} left if the rest run as fast as the finished ones"
        print(f"[{number}/{len(runs)}] {label}  (elapsed {clock(elapsed)}{left})", flush=True)
        try:
            row = run_script(script, script_args + seed_args, results_file)
        except KeyboardInterrupt:
            kept = f"{len(read_results(results_file)[0])} record(s) kept in {results_file}"
            print(f"interrupted during {label}; {kept}", file=sys.stderr)
            sys.exit(130)  # the status a shell gives a program stopped by Ctrl-C
        rows.append({"seed": seed, "label": label, **row})
        print(f"    -> {outcome(row)} after {clock(time.perf_counter() - start - elapsed)}")
        if row.get("exit_code") == SHARED_PROBLEM_EXIT_CODE:
            return rows
    print(f"All {len(runs)} run(s) done in {clock(time.perf_counter() - start)}")
    return rows


def clock(seconds):
    """Seconds as MM:SS, or as HH:MM:SS from an hour on."""
    return time.strftime("%H:%M:%S" if seconds >= 3600 else "%M:%S", time.gmtime(seconds))


def outcome(row):
    """'ok', 'diverged', or 'crashed (exit N)' for a record or a crashed row."""
    if not row.get("crashed"):
        return "diverged" if row["diverged"] else "ok"
    no_record = ", no record" if row["exit_code"] in (0, DIVERGED_EXIT_CODE) else ""
    return f"crashed (exit {row['exit_code']}{no_record})"


def by_setting(rows):
    """[(settings, a row per script, ratios)]; a row lacking settings joins the last that fits."""
    groups = []  # (settings, rows)
    for row in rows:
        known = {key: row[key] for key in SETTING_KEYS if row.get(key) is not None}
        if row.get("diverged"):
            known.pop("steps", None)  # it stopped early, whatever it was asked to run
        if row.get("data") == "synthetic":  # accuracy on memorised noise: left out
            row = {**row, "train_acc": None, "val_acc": None, "test_acc": None}
        agreeing = [g for g in groups if all(g[0].get(k, v) == v for k, v in known.items())]
        if not agreeing:
            groups.append((known, [row]))
            continue
        agreeing[-1][0].update(known)
        agreeing[-1][1].append(row)
    return [(known, median_runs(rows), ratios(median_runs(rows))) for known, rows in groups]


def median_runs(rows):
    """Per script its run of median images/s, with mean accuracies (fractions) and all "runs"."""
    by_script = {}
    for row in rows:
        by_script.setdefault(row["script"], []).append(row)
    summary = []
    for runs in by_script.values():
        finished = [run for run in runs if outcome(run) == "ok"]
        ranked = finished or [run for run in runs if not run.get("crashed")] or runs
        ranked = sorted(ranked, key=lambda run: run.get("images_per_s") or 0)
        summary.append({**ranked[(len(ranked) - 1) // 2], "runs": runs})
        for key in ("train_acc", "val_acc", "test_acc"):
            values = [run[key] for run in finished if run[key] is not None]
            if values:
                summary[-1][key] = statistics.mean(values)
    return summary


def seconds_per_step(row):
    """Seconds per optimizer step after warm-up: the record's own, or from its images/s."""
    if row.get("seconds_per_step") is None and row.get("images_per_s"):
        return row["batch_size"] * row["world_size"] / row["images_per_s"]
    return row.get("seconds_per_step")


def compare(row, base):
    """Time per step and peak memory of row as multiples of base's (None where one is missing)."""
    if base is None or outcome(row) != "ok":
        return None, None
    step, base_step = seconds_per_step(row), seconds_per_step(base)
    time_ratio = step / base_step if step and base_step else None
    memory, base_memory = row["peak_memory_gb"], base["peak_memory_gb"]
    if memory is None or base_memory is None:
        return time_ratio, None
    if base_memory < base.get("memory_resolution_gb", MEMORY_RESOLUTION_GB):
        return time_ratio, BELOW_RESOLUTION  # dividing by a number this small gives noise
    return time_ratio, memory / base_memory


def pays_off(row, parent):
    """After how many steps faster steps repay a slower first step (compiling: 04c), or None."""
    if parent is None or outcome(row) != "ok":
        return None
    first, step = row.get("first_step_s"), seconds_per_step(row)
    parent_first, parent_step = parent.get("first_step_s"), seconds_per_step(parent)
    if None in (first, step, parent_first, parent_step):
        return None
    if step >= parent_step:
        return "never, at this speed"
    steps = (first - parent_first) / (parent_step - step)
    return f"{math.ceil(steps)} steps" if steps > 0 else "at once"


def ratios(rows):
    """Per row of one setting: its comparisons with 01 and a lettered script's (04b) parent (04)."""
    finished = [row for row in rows if outcome(row) == "ok"]
    base = next((row for row in reversed(finished) if row["script"] == BASELINE), None)
    comparisons = []
    for row in rows:
        match = re.match(r"(\d\d)[a-z]+_", row["script"])  # a lettered branch: its number
        parent = match.group(1) if match else None
        parents = [other for other in finished if other["script"].startswith(f"{parent}_")]
        parent_row = parents[-1] if parents else None
        entry = {"parent": parent, "test_acc_points": None, "pays_off": pays_off(row, parent_row)}
        entry["time_per_step"], entry["memory"] = compare(row, base)
        entry["parent_time_per_step"], entry["parent_memory"] = compare(row, parent_row)
        entry["seeds_vs_01"], entry["seeds_vs_parent"] = paired(row, base), paired(row, parent_row)
        if base and outcome(row) == "ok" and None not in (row["test_acc"], base["test_acc"]):
            entry["test_acc_points"] = (row["test_acc"] - base["test_acc"]) * 100
        comparisons.append(entry)
    return comparisons


def accuracy_by_seed(row):
    """{seed: test accuracy in percent} of a script's finished runs (a repeated seed: the mean)."""
    by_seed = {}
    for run in row.get("runs", [row]):
        if outcome(run) == "ok" and run.get("test_acc") is not None:
            by_seed.setdefault(run.get("seed"), []).append(run["test_acc"] * 100)
    return {seed: statistics.mean(values) for seed, values in by_seed.items()}


def paired(row, other):
    """The verdict on row's test accuracy minus other's, seed by seed; None under two pairs."""
    if other is None or other is row:
        return None
    accuracy, base = accuracy_by_seed(row), accuracy_by_seed(other)
    differences = [accuracy[seed] - base[seed] for seed in accuracy if seed in base]
    return verdict(differences) if len(differences) > 1 else None


def verdict(differences):
    """Two or more differences (points) in words, by the 95% t interval of their mean."""
    mean, pairs = statistics.mean(differences), len(differences)
    try:
        from scipy import stats  # the runner's dependency, not the scripts'
    except ImportError:
        return f"{mean:+.2f} points over {pairs} seeds"
    half = float(stats.t.ppf(0.975, pairs - 1)) * statistics.stdev(differences) / math.sqrt(pairs)
    interval = f"95% interval {mean - half:+.2f} to {mean + half:+.2f}"
    if mean - half <= 0 and mean + half >= 0:
        return f"within seed noise ({mean:+.2f} points, {interval})"
    return f"{'lower' if mean < 0 else 'higher'} by {abs(mean):.2f} points ({interval})"


def cell(value, template=None, scale=1):
    """A number as text: by template, else 3 significant digits below 10 (2.74) or 1391.5."""
    if value is None or isinstance(value, str):
        return value or "–"
    template = template or ("{:.1f}" if value >= 10 else "{:#.3g}")
    return template.format(value * scale)


def table_cells(row, ratio):
    """A script's row of the tables as {column: text}; a crashed row has its script and result."""
    result = ", ".join(sorted({outcome(run) for run in row["runs"]}))  # ok: all runs finished
    cells = {"Script": row["script"], "Result": result if result == "ok" else f"**{result}**"}
    if row.get("crashed"):
        return cells
    seeds = list(accuracy_by_seed(row).values())
    spread, extremes = "–", "–"
    if len(seeds) > 1:
        spread = f"{statistics.stdev(seeds):.2f}"
        extremes = f"{min(seeds):.1f}–{max(seeds):.1f}"
    cells.update(
        {
            "Model": row["model"],
            "Precision in effect": row["precision"],
            "Matmul precision": row["matmul_precision"],
            "Training time (s)": cell(row["train_time_s"]),
            "Images/s": cell(row["images_per_s"]),
            "First step (s)": cell(row.get("first_step_s")),
            "Time/step (s)": cell(seconds_per_step(row)),
            "Time/step vs 01": cell(ratio["time_per_step"], "{:.2f}x"),
            "Data wait": cell(row["data_wait_share"], "{:.1%}"),
            "MFU": cell(row.get("mfu"), "{:.1%}"),
            "Peak memory (GB)": cell(row["peak_memory_gb"], "{:.2f}"),
            "Memory vs 01": cell(ratio["memory"], "{:.2f}x"),
            "Time/step vs parent": cell(ratio["parent_time_per_step"], "{:.2f}x"),
            "Memory vs parent": cell(ratio["parent_memory"], "{:.2f}x"),
            "Pays off vs parent after": cell(ratio["pays_off"]),
            "Train acc. (%)": cell(row["train_acc"], "{:.1f}", 100),
            "Val acc. (%)": cell(row["val_acc"], "{:.1f}", 100),
            "Test acc. (%)": cell(row["test_acc"], "{:.1f}", 100),
            "Test acc. vs 01 (points)": cell(ratio["test_acc_points"], "{:+.1f}"),
            "SD over seeds (points)": spread,
            "Min–max over seeds (%)": extremes,
            "Vs 01, paired by seed": cell(ratio["seeds_vs_01"]),
            "Vs parent, paired by seed": cell(ratio["seeds_vs_parent"]),
        }
    )
    return cells


def table(columns, rows):
    """A Markdown table of the columns with a value, padded to line up in a terminal too."""
    shown = ("Script", "First step (s)")  # the first step's time: "–" in older records
    columns = [n for n in columns if n in shown or any(row.get(n, "–") != "–" for row in rows)]
    texts = [columns] + [[row.get(name, "–") for name in columns] for row in rows]
    widths = [max(len(line[i]) for line in texts) for i in range(len(columns))]
    lines = []
    for line in texts:  # text left-aligned, numbers right-aligned
        pairs = zip(line, widths, columns, strict=True)
        cells = [t.ljust(w) if name in TEXT else t.rjust(w) for t, w, name in pairs]
        lines.append("| " + " | ".join(cells) + " |")
    ends = ["-" if name in TEXT else ":" for name in columns]  # Markdown's alignment marks
    rules = ["-" * (width + 1) + end for width, end in zip(widths, ends, strict=True)]
    return lines[:1] + ["|" + "|".join(rules) + "|"] + lines[1:]


def notes(groups):
    """The sentences that explain what the tables hold, where they hold it."""
    rows = [row for _, group_rows, _ in groups for row in group_rows]
    comparisons = [ratio for _, _, group_ratios in groups for ratio in group_ratios]
    resolution = {r.get("memory_resolution_gb", MEMORY_RESOLUTION_GB) for r in rows}
    seeded = any(ratio["seeds_vs_01"] or ratio["seeds_vs_parent"] for ratio in comparisons)
    below = any(BELOW_RESOLUTION in (r["memory"], r["parent_memory"]) for r in comparisons)
    notes = [
        (True, "Time/step: the mean of the steps after warm-up, which every ratio compares."),
        (any(r.get("data") == "synthetic" for r in rows), "Accuracy on generated data: left out."),
        (any(len(r["runs"]) > 1 for r in rows), REPEATED),
        (seeded, "Paired by seed: differences of runs with the same weights and data order."),
        (any(r["parent"] for r in comparisons), PARENT),
        (below, f"{BELOW_RESOLUTION}: the baseline's peak memory is under {max(resolution)} GB."),
        (seeded and "interval" not in verdict([0, 1]), "For 95% intervals: pip install scipy"),
        (mfu_note(rows) is not None, mfu_note(rows)),
    ]
    return [sentence for needed, sentence in notes if needed]


def mfu_note(rows):
    """What each script's MFU is a share of (its record's mfu_peak label), scripts grouped by it:
    on a CPU, the matmul ceiling measured at start in the precision in effect, so the column's
    bases differ. None when no row has an MFU."""
    scripts_by_label = {}
    for row in rows:
        peak = row.get("mfu_peak")
        if row.get("mfu") is None or not peak:
            continue
        number = row["script"].split("_")[0]
        scripts_by_label.setdefault(peak["label"], []).append(number)
    if not scripts_by_label:
        return None
    parts = [f"{label} for {', '.join(numbers)}" for label, numbers in scripts_by_label.items()]
    return f"MFU: the model's FLOP/s per device {'; '.join(parts)}."


def chart_panels(rows, comparisons):
    """Per panel (title, bars): (length, text, error bar: standard deviation over seeds) per row."""
    panels = []
    for title, key, scale, column, versus in CHART:
        bars = []
        for row, ratio in zip(rows, comparisons, strict=True):
            cells, seeds = table_cells(row, ratio), list(accuracy_by_seed(row).values())
            value = seconds_per_step(row) if key == "seconds_per_step" else row.get(key)
            error = statistics.stdev(seeds) if key == "test_acc" and len(seeds) > 1 else None
            if outcome(row) != "ok" or value is None:
                text = outcome(row) if outcome(row) != "ok" else "not measured"
                bars.append((None, text, None))
                continue
            shown = [text for text in (cells[column], f"({cells[versus]})") if text != "(–)"]
            bars.append((value * scale, "  ".join(shown), error))
        panels.append((title, bars))
    drawn = [(title, bars) for title, bars in panels if any(bar[0] is not None for bar in bars)]
    return drawn or panels[:1]  # accuracy on generated data: no panel


def plot(groups, path, versions):
    """results.png: a bar per script for each panel, 01 in orange. Errors: ImportError."""
    import matplotlib.pyplot as plt

    plt.switch_backend("Agg")  # files only, no window
    rows = [row for _, group_rows, _ in groups for row in group_rows]
    panels = chart_panels(rows, [ratio for _, _, group_ratios in groups for ratio in group_ratios])
    labels = [f"{r['script']} ({n})" for n, (_, group, _) in enumerate(groups, 1) for r in group]
    size = (5.6 * len(panels), 1.6 + 0.55 * len(rows))
    figure, axes = plt.subplots(1, len(panels), figsize=size, sharey=True, squeeze=False)
    for axis, (title, bars) in zip(axes[0], panels, strict=True):
        for y, (row, (value, text, error)) in enumerate(zip(rows, bars, strict=True)):
            if value is None:
                axis.text(0, y, f" {text}", va="center", style="italic", color="gray")
                continue
            colour = "tab:orange" if row["script"] == BASELINE else "tab:blue"
            axis.barh(y, value, xerr=error, color=colour, capsize=3)
            axis.text(value + (error or 0), y, f" {text}", va="center", fontsize=9)
        ends = [value + (error or 0) for value, _, error in bars if value is not None]
        axis.set_xlim(0, max(ends, default=1) * 1.8)  # room for the text
        axis.set_title(title)
    axes[0][0].set_yticks(range(len(rows)), labels)
    axes[0][0].invert_yaxis()
    hardware = ", ".join(sorted({row["device_name"] for row in rows if "device_name" in row}))
    figure.suptitle(f"{hardware} | {versions}\nOrange: {BASELINE}; (N): setting N", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def summarize(rows, out, command):
    """Print each setting's tables; write them to results.md, and results.png (with matplotlib)."""
    groups, lines = by_setting(rows), []
    for settings, summary, comparisons in groups:
        cells = [table_cells(row, ratio) for row, ratio in zip(summary, comparisons, strict=True)]
        heading = f"Setting: {', '.join(f'{key} {value}' for key, value in settings.items())}."
        print("\n".join([f"\n{heading}", *table(SPEED, cells), "", *table(ACCURACY, cells)]))
        lines += [heading, "", *table(COLUMNS, cells), ""]
    records = [row for row in rows if not row.get("crashed")]
    versions = [", ".join(f"{k} {v}" for k, v in r["versions"].items()) for r in records]
    versions = " / ".join(dict.fromkeys(versions))
    example = f"{records[0]['script']}: {records[0]['memory_measure']}"
    lines += [*notes(groups), f"Versions: {versions}."]
    lines += [f"Peak memory is what each script measured, e.g. {example}.", "", "Produced by:"]
    print("\n".join(notes(groups)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join([*lines, "", "```", command, "```", ""]))
    try:
        plot(groups, out / "results.png", versions)
        print(f"Wrote {out / 'results.md'} and {out / 'results.png'}")
    except ImportError:
        print(f"Wrote {out / 'results.md'}; no chart: it needs matplotlib (pip install matplotlib)")


def out_problem(out):
    """Why the runner cannot write its files to the --out folder (made here if missing), or None:
    a read-only checkout, say, where the default, ./results, is."""
    reason = None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or str(error)
    if reason is None and not os.access(out, os.W_OK):
        reason = "not writable"
    if reason is None:
        return None
    return (
        f"cannot write to --out {out} ({out.resolve()}: {reason}); name a folder you can write, "
        "e.g. --out ~/vit_results"
    )


def main(argv=None):
    """Run (or load) the records; print and write the tables and the chart. Returns the exit status:
    0; 1 when a script crashed; 2 for a wrong script or results file, an --out it cannot write,
    or when a problem every script shares stopped the run. Errors: flags that cannot work exit 2,
    Ctrl-C (or SIGTERM) 130."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, script_args = parse_args(argv)
    command = shlex.join(["python", "benchmark.py", *argv])
    results_file = args.from_results or (args.out / "results.jsonl").resolve()
    saved = results_file.parent / "command.txt"  # the command of the run that wrote the records
    try:
        scripts = find_scripts(args.scripts)
        rows, skipped = read_results(results_file)
    except ValueError as error:  # a wrong script name or results file
        print(f"error: {error}", file=sys.stderr)
        return SHARED_PROBLEM_EXIT_CODE
    if args.from_results and not rows:
        print(f"error: --from-results {results_file}: no records (or no file)", file=sys.stderr)
        return SHARED_PROBLEM_EXIT_CODE
    if args.from_results and saved.exists():
        command = f"{saved.read_text().strip()}\n# tabulated again by: {command}"
    problem = out_problem(args.out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return SHARED_PROBLEM_EXIT_CODE
    if rows and not args.from_results:
        print(f"Adding to {results_file}, which holds {len(rows)} record(s)")
    if not args.from_results:
        with open(saved, "a" if args.append else "w") as file:
            file.write(command + "\n")  # with --append, every run's command
        runs = [(path, seed) for seed in args.seeds or [None] * args.repeats for path in scripts]
        rows += run_all(runs, script_args, results_file)  # taking turns: drift hits all alike
    for sentence in skipped:
        print(sentence)
    crashed = [row for row in rows if row.get("crashed")]
    if len(crashed) < len(rows):
        summarize(rows, args.out, command)
    if rows[-1].get("exit_code") == SHARED_PROBLEM_EXIT_CODE:
        print(f"{rows[-1]['reason']}\n{SHARED_PROBLEM}", file=sys.stderr)
        return SHARED_PROBLEM_EXIT_CODE
    if crashed:
        print(f"error: {len(crashed)} of {len(rows)} run(s) crashed:", file=sys.stderr)
    for row in crashed:
        print(f"  {row['label']}: {row['reason']}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, terminate)  # `kill`, `docker stop`, a scheduler: as Ctrl-C
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # between runs, or while tabulating: the records are in their file
        print("interrupted; the records written so far are kept", file=sys.stderr)
        sys.exit(130)
