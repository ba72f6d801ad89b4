"""benchmark.py: tables, chart and ratios from records, settings kept apart, crashes, refusals,
Ctrl-C, and one real run of two scripts over two seeds."""

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import benchmark  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(script, **changes):
    """A results record as the scripts write it; the numbers are chosen so the ratios are exact."""
    return {
        "script": script,
        "precision": "32-true",
        "precision_requested": "32-true",
        "device": "cuda",
        "device_name": "Test GPU 80GB",
        "world_size": 1,
        "model": "vit_b_16",
        "data": "cifar10",
        "epochs": 1,
        "batch_size": 32,
        "learning_rate": 5e-05,
        "seed": 123,
        "steps": 50,
        "matmul_precision": "high",
        "train_time_s": 60.0,
        "images_per_s": 100.0,
        "data_wait_share": 0.125,
        "flops_per_image": 1.0e10,
        "mfu": 0.4,
        "peak_memory_gb": 2.0,
        "memory_measure": "2.00 GB allocated (max_memory_allocated), 2.50 GB reserved",
        "weight_dtype": "float32",
        "matmul_output_dtype": "float32",
        "train_acc": 0.5,
        "val_acc": 0.5,
        "test_acc": 0.5,
        "diverged": False,
        "diverged_at": None,
        "versions": {"python": "3.11.7", "torch": "9.9.9", "lightning": "2.6.6"},
        **changes,
    }


DIVERGED = {"steps": 1, "images_per_s": None, "data_wait_share": None, "diverged": True}
DIVERGED.update(train_acc=None, val_acc=None, test_acc=None, peak_memory_gb=1.0)
RECORDS = [
    record("01_fabric_baseline.py"),
    record("03_fabric_16true.py", precision="16-true", train_time_s=0.5, **DIVERGED),
    record(
        "04_fabric_bf16true.py",
        precision="bf16-true",
        train_time_s=30.0,
        images_per_s=200.0,
        peak_memory_gb=1.0,
        data_wait_share=0.25,
        train_acc=0.75,
        val_acc=0.75,
        test_acc=0.75,
    ),
]


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def tabulate(tmp_path, records, capsys=None):
    """Run the runner on records with --from-results: (exit status, results.md's table rows as
    {column: text}, results.md, terminal output)."""
    out = tmp_path / "out"
    code = benchmark.main(
        ["--from-results", str(write(tmp_path / "in.jsonl", records)), "--out", str(out)]
    )
    markdown = (out / "results.md").read_text() if (out / "results.md").exists() else ""
    printed = capsys.readouterr().out if capsys else ""
    return code, table(markdown), markdown, printed


def table(text, first=0):
    """The rows of the first-th Markdown table in text as {column: text}."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    if len(tables) <= first:
        return []
    header, _, *rows = tables[first]
    return [dict(zip(header, row, strict=True)) for row in rows]


def test_from_results_writes_a_png_chart_and_one_table_row_per_record(tmp_path, capsys):
    code, rows, _, printed = tabulate(tmp_path, RECORDS, capsys)
    assert code == 0
    chart = (tmp_path / "out" / "results.png").read_bytes()
    assert chart.startswith(PNG_SIGNATURE) and len(chart) > 20_000
    assert [row["Script"] for row in rows] == [r["script"] for r in RECORDS]
    assert [row["Result"] for row in rows] == ["ok", "**diverged**", "ok"]
    assert table(printed)[2]["Time/step vs 01"] == "0.50x"  # the terminal shows the ratios


def test_table_numbers_versions_and_command_come_from_the_records(tmp_path):
    (tmp_path / "command.txt").write_text("python benchmark.py --max-steps 50\n")
    _, rows, markdown, _ = tabulate(tmp_path, RECORDS)
    assert rows[2] == {
        "Script": "04_fabric_bf16true.py",
        "Model": "vit_b_16",
        "Precision in effect": "bf16-true",
        "Matmul precision": "high",
        "Training time (s)": "30.0",
        "Images/s": "200.0",
        "First step (s)": "–",  # older records have none
        "Time/step (s)": "0.160",  # 32 images / 200 images/s
        "Time/step vs 01": "0.50x",
        "Data wait": "25.0%",
        "MFU": "40.0%",
        "Peak memory (GB)": "1.00",
        "Memory vs 01": "0.50x",
        "Train acc. (%)": "75.0",
        "Val acc. (%)": "75.0",
        "Test acc. (%)": "75.0",
        "Test acc. vs 01 (points)": "+25.0",
        "Result": "ok",
    }
    assert "device_name Test GPU 80GB" in markdown and "torch 9.9.9" in markdown
    assert "python benchmark.py --max-steps 50\n# tabulated again by: python" in markdown


@pytest.mark.parametrize("seconds, shown", [(4.9, "4.90"), (60.0, "60.0"), (3600.0, "3600.0")])
def test_training_time_is_in_seconds_in_every_table_whatever_its_length(tmp_path, seconds, shown):
    rows = tabulate(tmp_path, [record("01_fabric_baseline.py", train_time_s=seconds)])[1]
    assert rows[0]["Training time (s)"] == shown


@pytest.mark.parametrize(
    "value, shown",
    [(1391.54, "1391.5"), (12.34, "12.3"), (2.7392, "2.74"), (0.021, "0.0210"), (None, "–")],
)
def test_numbers_keep_three_significant_digits_below_ten(value, shown):
    assert benchmark.cell(value) == shown


def test_slow_speeds_print_with_their_digits_not_as_zero(tmp_path, capsys):
    records = [
        record("01_fabric_baseline.py", images_per_s=0.75),
        record("04_fabric_bf16true.py", images_per_s=0.021),
    ]
    _, rows, _, printed = tabulate(tmp_path, records, capsys)
    # 0.021 images/s at batch size 32: 1523.8 s per step, 35.71x 01's 42.7 s
    assert (rows[1]["Images/s"], rows[1]["Time/step (s)"]) == ("0.0210", "1523.8")
    assert table(printed)[1]["Time/step vs 01"] == "35.71x"


def test_table_chart_and_terminal_compare_the_same_steady_state_time_per_step(tmp_path, capsys):
    # 00 took 1.05x 01's training time (warm-up and validation in it) but 0.80x its time per step
    records = [
        record("00_pytorch_baseline.py", train_time_s=63.0, images_per_s=125.0),
        record("01_fabric_baseline.py"),
    ]
    _, rows, _, printed = tabulate(tmp_path, records, capsys)
    assert rows[0]["Time/step vs 01"] == table(printed)[0]["Time/step vs 01"] == "0.80x"
    summary = benchmark.median_runs(records)
    bars = benchmark.chart_panels(summary, benchmark.ratios(summary))[0][1]
    assert bars[0] == (pytest.approx(0.256), "0.256  (0.80x)", None)


@pytest.mark.parametrize(
    "changes, seconds",
    [
        ({"images_per_s": 200.0, "world_size": 2}, 0.32),  # 2 processes x 32 images / 200 images/s
        ({"seconds_per_step": 0.5}, 0.5),  # the record's own measurement comes first
        ({"images_per_s": None}, None),  # diverged during warm-up: no steady state
    ],
)
def test_time_per_step_is_the_records_own_or_from_images_per_s(changes, seconds):
    row = record("04_fabric_bf16true.py", **changes)
    assert benchmark.seconds_per_step(row) == pytest.approx(seconds)


def test_memory_ratios_to_a_baseline_below_resolution_are_marked_not_printed(tmp_path, capsys):
    records = [
        record("01_fabric_baseline.py", peak_memory_gb=0.024),
        record("04_fabric_bf16true.py", peak_memory_gb=0.016),
    ]  # 0.016 / 0.024 would print as 0.67x: two readings at the noise floor
    _, rows, markdown, printed = tabulate(tmp_path, records, capsys)
    assert rows[1]["Memory vs 01"] == table(printed)[1]["Memory vs 01"] == "below resolution"
    assert "0.67x" not in markdown + printed
    assert "below resolution: the baseline's peak memory is under 0.1 GB." in markdown
    summary = benchmark.median_runs(records)
    chart = benchmark.chart_panels(summary, benchmark.ratios(summary))
    assert chart[1][1][1] == (0.016, "0.02  (below resolution)", None)


def test_a_record_may_state_a_finer_memory_resolution():
    rows = [
        record("01_fabric_baseline.py", peak_memory_gb=0.02, memory_resolution_gb=0.001),
        record("04_fabric_bf16true.py", peak_memory_gb=0.01),
    ]
    assert benchmark.ratios(rows)[1]["memory"] == pytest.approx(0.5)


def test_chart_draws_no_empty_panel():
    summary = benchmark.median_runs(RECORDS)
    titles = [title for title, _ in benchmark.chart_panels(summary, benchmark.ratios(summary))]
    assert titles == ["Time per step, steady state (s)", "Peak memory (GB)", "Test accuracy (%)"]
    no_accuracy = [{**r, "test_acc": None} for r in summary]  # as on generated data
    titles = [t for t, _ in benchmark.chart_panels(no_accuracy, benchmark.ratios(no_accuracy))]
    assert titles == ["Time per step, steady state (s)", "Peak memory (GB)"]


KAHAN = record(
    "04b_fabric_bf16true_kahan.py", precision="bf16-true", images_per_s=160.0, peak_memory_gb=1.25
)
ADAM_EPS = record(
    "03b_fabric_16true_adam_eps.py", precision="16-true", images_per_s=50.0, peak_memory_gb=1.0
)


def test_a_lettered_branch_is_also_compared_with_its_parent(tmp_path, capsys):
    records = RECORDS[:2] + [ADAM_EPS] + RECORDS[2:] + [KAHAN]  # 01, 03 (diverged), 03b, 04, 04b
    comparisons = benchmark.ratios(benchmark.median_runs(records))
    kahan, adam_eps = comparisons[4], comparisons[2]
    # 04b: 0.2 s per step and 1.25 GB, against 01's 0.32 s and 2 GB and against 04's 0.16 s and 1 GB
    assert (kahan["time_per_step"], kahan["memory"]) == (pytest.approx(0.625), 0.625)
    assert (kahan["parent"], kahan["parent_time_per_step"], kahan["parent_memory"]) == (
        "04",
        pytest.approx(1.25),
        1.25,
    )
    assert adam_eps["parent"] == "03" and adam_eps["parent_time_per_step"] is None  # 03 diverged
    assert [ratio["parent"] for ratio in comparisons[:2] + comparisons[3:4]] == [None] * 3
    _, rows, markdown, printed = tabulate(tmp_path, records, capsys)
    for shown in (rows, table(printed)):
        assert (shown[4]["Time/step vs parent"], shown[4]["Memory vs parent"]) == ("1.25x", "1.25x")
        assert (shown[2]["Time/step vs parent"], shown[2]["Memory vs parent"]) == ("–", "–")
    assert "vs parent: a lettered script (04b) against its number (04)" in markdown


def test_compiling_pays_off_after_the_steps_its_faster_steps_repay_the_slow_first_one(tmp_path):
    # 04c: first step 31 s against 04's 1 s, then 0.25 s per step against 0.5 s: (31 - 1) / 0.25
    parent = record("04_fabric_bf16true.py", first_step_s=1.0, seconds_per_step=0.5)
    compiled = record("04c_fabric_bf16true_compile.py", first_step_s=31.0, seconds_per_step=0.25)
    assert benchmark.pays_off(compiled, parent) == "120 steps"
    assert (
        benchmark.pays_off({**compiled, "seconds_per_step": 0.5}, parent) == "never, at this speed"
    )
    assert benchmark.pays_off({**compiled, "first_step_s": 0.5}, parent) == "at once"
    older = {key: value for key, value in parent.items() if key != "first_step_s"}
    assert benchmark.pays_off(compiled, older) is None
    rows = tabulate(tmp_path, [record("01_fabric_baseline.py"), parent, compiled])[1]
    assert [row["First step (s)"] for row in rows] == ["–", "1.00", "31.0"]
    assert rows[2]["Pays off vs parent after"] == "120 steps"


@pytest.mark.parametrize(
    "argv, content, message",
    [
        (["--repeats", "0"], None, "give --repeats N or --seeds N (one of them), N at least 1"),
        (["--seeds", "3", "--repeats", "2"], None, "give --repeats N or --seeds N (one of them)"),
        (
            ["--from-results", "{missing}"],
            None,
            "--from-results {missing}: no records (or no file)",
        ),
        (["--from-results", "{file}"], "\n", "--from-results {file}: no records (or no file)"),
        (
            ["--from-results", "{file}"],
            json.dumps(RECORDS[0]) + "\n" + json.dumps({"script": "04.py", "steps": 20}),
            "{file} line 2 is not a results record: it lacks precision, device_name, world_size",
        ),
        (
            ["--from-results", "{file}"],
            json.dumps({**RECORDS[0], "images_per_s": "fast"}) + "\n",
            "{file} line 1 is not a results record: ['images_per_s'] are no numbers",
        ),
        (["--from-results", "{file}", "--quick"], "", "--from-results runs no script"),
        (["--out", "{file}"], "a file\n", "--out {file} is a file; give a folder"),
        (["--scripts", "99"], None, "no script matches '99'; choose from 00_pytorch_baseline.py"),
        (["--quick", "--results", "x.jsonl"], None, "the runner passes --results (and, with"),
        (["--seeds", "2", "--seed=3"], None, "the runner passes --results (and, with --seeds,"),
        (["--seeds", "0"], None, "give --repeats N or --seeds N (one of them), N at least 1"),
    ],
    ids=[
        "repeats 0",
        "seeds and repeats",
        "missing file",
        "no records",
        "record lacks keys",
        "a value not a number",
        "from-results with a script flag",
        "out is a file",
        "no such script",
        "results as a script flag",
        "seed with seeds",
        "no seeds",
    ],
)
def test_bad_runner_input_stops_with_one_sentence_and_exit_2(
    tmp_path, capsys, argv, content, message
):
    paths = {"missing": tmp_path / "missing.jsonl", "file": tmp_path / "bad.jsonl"}
    if content is not None:
        paths["file"].write_text(content)
    argv = ["--out", str(tmp_path / "out")] + [arg.format(**paths) for arg in argv]  # later wins
    try:
        code = benchmark.main(argv)
    except SystemExit as stop:  # argparse's refusals
        code = stop.code
    assert code == 2
    assert "error: " + message.format(**paths) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # stopped before writing anything


def test_time_left_is_estimated_from_the_finished_scripts_and_says_so(
    tmp_path, monkeypatch, capsys
):
    now, durations = [0.0], {"fast.py": 10.0, "slow.py": 300.0}

    def run_script(script, script_args, results_file):  # takes its duration on a fake clock
        now[0] += durations[script.name]
        return record(script.name)

    monkeypatch.setattr(benchmark, "run_script", run_script)
    clock = SimpleNamespace(perf_counter=lambda: now[0], strftime=time.strftime, gmtime=time.gmtime)
    monkeypatch.setattr(benchmark, "time", clock)
    runs = [(Path("fast.py"), None), (Path("slow.py"), None), (Path("fast.py"), None)]
    benchmark.run_all(runs, [], tmp_path / "results.jsonl")
    guess = "left if the rest run as fast as the finished ones)"
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")] == [
        "[1/3] fast.py  (elapsed 00:00)",
        f"[2/3] slow.py  (elapsed 00:10; about 00:20 {guess}",
        f"[3/3] fast.py  (elapsed 05:10; about 02:35 {guess}",
    ]


def test_ratios_to_the_01_baseline_are_exact_and_absent_for_a_diverged_run():
    baseline, diverged, bf16 = benchmark.ratios(benchmark.median_runs(RECORDS))
    assert (bf16["time_per_step"], bf16["memory"], bf16["test_acc_points"]) == (0.5, 0.5, 25.0)
    assert (baseline["time_per_step"], baseline["memory"], baseline["test_acc_points"]) == (
        1.0,
        1.0,
        0.0,
    )
    assert (diverged["time_per_step"], diverged["memory"], diverged["test_acc_points"]) == (
        None,
        None,
        None,
    )


def test_no_ratios_without_a_baseline_record():
    comparisons = benchmark.ratios(benchmark.median_runs(RECORDS[1:]))
    assert all(r["time_per_step"] is None and r["memory"] is None for r in comparisons)


def test_records_of_different_settings_are_compared_only_within_their_setting(tmp_path, capsys):
    records = [
        record("01_fabric_baseline.py", batch_size=8, images_per_s=3.0),  # 2.67 s per step
        record("01_fabric_baseline.py", batch_size=128, images_per_s=100.0),  # 1.28 s
        record("04_fabric_bf16true.py", batch_size=128, images_per_s=200.0),  # 0.64 s
        record("03_fabric_16true.py", batch_size=128, **DIVERGED),  # stopped early: fewer steps
    ]
    code, _, markdown, printed = tabulate(tmp_path, records, capsys)
    assert code == 0 and "41.6" not in markdown and "ran 2 times" not in markdown
    first, second = table(markdown, 0), table(markdown, 1)
    assert [(row["Script"], row["Time/step vs 01"]) for row in first] == [
        ("01_fabric_baseline.py", "1.00x")
    ]
    assert [(row["Script"], row["Time/step vs 01"]) for row in second] == [
        ("01_fabric_baseline.py", "1.00x"),
        ("04_fabric_bf16true.py", "0.50x"),
        ("03_fabric_16true.py", "–"),
    ]
    headings = [line for line in markdown.splitlines() if line.startswith("Setting: ")]
    assert [", batch_size 8," in headings[0], ", batch_size 128," in headings[1]] == [True, True]
    assert printed.count("\nSetting: ") == 2


def test_an_unreadable_line_in_the_middle_is_named_and_the_rest_tabulated(tmp_path, capsys):
    path = tmp_path / "in.jsonl"  # a run killed while writing, then runs that appended after it
    lines = [json.dumps(RECORDS[0]), json.dumps(RECORDS[2])[:40], json.dumps(RECORDS[2])]
    path.write_text("\n".join(lines) + "\n")
    assert benchmark.main(["--from-results", str(path), "--out", str(tmp_path / "out")]) == 0
    assert f"{path} line 2 is not a whole JSON record; skipped it" in capsys.readouterr().out
    rows = table((tmp_path / "out" / "results.md").read_text())
    assert [row["Script"] for row in rows] == ["01_fabric_baseline.py", "04_fabric_bf16true.py"]


FAKE_SCRIPT = """import json, os, sys, time
results = sys.argv[sys.argv.index("--results") + 1]
print(f"fake script output (pid {{os.getpid()}})", flush=True)
if {sleep}:
    try:
        time.sleep({sleep})
    except KeyboardInterrupt:
        sys.exit(130)
if {write}:
    record = {record!r}
    record.update(script=os.path.basename(sys.argv[0]), argv=sys.argv[1:], cwd=os.getcwd())
    if "--seed" in sys.argv:
        record.update(seed=int(sys.argv[sys.argv.index("--seed") + 1]))
    open(results, "a").write(json.dumps(record) + "\\n")
if {exit_code}:
    print("error: {reason}", file=sys.stderr)
sys.exit({exit_code})
"""


def fake_script(folder, name, exit_code=0, write=True, sleep=0, reason="it broke", **changes):
    path = folder / name
    text = FAKE_SCRIPT.format(
        write=write, record=record(name, **changes), exit_code=exit_code, sleep=sleep, reason=reason
    )
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "exit_code, write, diverged, expected",
    [
        (1, False, False, "crashed (exit 1)"),
        (1, True, False, "crashed (exit 1)"),  # a record, but the script failed afterwards
        (0, False, False, "crashed (exit 0, no record)"),
        (3, True, True, "diverged"),
        (0, True, False, "ok"),
    ],
)
def test_run_script_outcome_follows_exit_code_and_record(
    tmp_path, exit_code, write, diverged, expected
):
    script = fake_script(tmp_path, "fake.py", exit_code, write, diverged=diverged)
    row = benchmark.run_script(script, [], tmp_path / "results.jsonl")
    assert benchmark.outcome(row) == expected


def test_a_crashed_script_is_marked_and_named_with_its_reason_then_exit_1(tmp_path, capsys):
    crash = fake_script(tmp_path, "crash.py", 1, write=False, reason="no module named optimi")
    good, out = fake_script(tmp_path, "good.py"), tmp_path / "out"
    argv = ["--scripts", str(crash), str(good), "--out", str(out), "--quick", "--max-steps", "20"]
    assert benchmark.main(argv) == 1
    rows = table((out / "results.md").read_text())
    assert [(row["Script"], row["Result"]) for row in rows] == [
        ("crash.py", "**crashed (exit 1)**"),
        ("good.py", "ok"),
    ]
    records = benchmark.read_results(out / "results.jsonl")[0]
    assert [(r["script"], r["argv"][:-2]) for r in records] == [("good.py", argv[5:])]
    assert (out / "results.png").read_bytes().startswith(PNG_SIGNATURE)
    err = capsys.readouterr().err.splitlines()
    assert err[-2:] == [
        "error: 1 of 2 run(s) crashed:",
        "  crash.py: error: no module named optimi",
    ]


def test_a_problem_every_script_shares_stops_the_run_at_once_without_a_table(tmp_path, capsys):
    offline = "could not download CIFAR-10 to data (no network); train offline with --quick"
    first = fake_script(tmp_path, "first.py", 2, write=False, reason=offline)
    second, out = fake_script(tmp_path, "second.py"), tmp_path / "out"
    assert benchmark.main(["--scripts", str(first), str(second), "--out", str(out)]) == 2
    printed = capsys.readouterr()
    assert "[2/2]" not in printed.out and not (out / "results.md").exists()
    assert printed.err.splitlines()[-2:] == [
        f"error: {offline}",
        "every script would stop the same way; fix that and run again",
    ]


def test_a_second_run_into_the_same_out_is_refused_and_adds_with_append(tmp_path, capsys):
    script, out = fake_script(tmp_path, "good.py"), tmp_path / "out"
    assert benchmark.main(["--scripts", str(script), "--out", str(out)]) == 0
    with pytest.raises(SystemExit):
        benchmark.main(["--scripts", str(script), "--out", str(out)])
    results = out / "results.jsonl"
    assert f"{results} holds earlier records; add --append" in capsys.readouterr().err
    assert benchmark.main(["--scripts", str(script), "--out", str(out), "--append"]) == 0
    assert f"Adding to {results.resolve()}, which holds 1 record(s)" in capsys.readouterr().out
    assert len(benchmark.read_results(results)[0]) == 2
    assert len((out / "command.txt").read_text().splitlines()) == 2


def test_relative_paths_are_taken_from_the_folder_the_runner_is_started_in(tmp_path):
    fake_script(tmp_path, "here.py")
    (tmp_path / "elsewhere").mkdir()
    command = [sys.executable, str(ROOT / "benchmark.py"), "--scripts", "here.py", "--out", "o"]
    process = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert process.returncode == 0, process.stderr
    records = benchmark.read_results(tmp_path / "o" / "results.jsonl")[0]
    assert records[0]["cwd"] == str(tmp_path)  # the script ran where the user is, not in ROOT


def test_seeds_run_every_script_once_per_seed_taking_turns(tmp_path):
    scripts = [fake_script(tmp_path, name) for name in ("01_fabric_baseline.py", "04.py")]
    out = tmp_path / "out"
    argv = ["--scripts", *map(str, scripts), "--seeds", "7", "8", "--out", str(out), "--quick"]
    assert benchmark.main(argv) == 0
    records = benchmark.read_results(out / "results.jsonl")[0]
    assert [(r["script"], r["seed"]) for r in records] == [
        ("01_fabric_baseline.py", 7),
        ("04.py", 7),
        ("01_fabric_baseline.py", 8),
        ("04.py", 8),
    ]
    assert records[1]["argv"][:3] == ["--quick", "--seed", "7"]


def test_ctrl_c_stops_the_script_keeps_the_records_and_says_so_in_one_line(tmp_path):
    script, out = fake_script(tmp_path, "slow.py", sleep=30), tmp_path / "out"
    out.mkdir()
    write(out / "results.jsonl", RECORDS[:1])  # an earlier run's record: kept
    command = [sys.executable, str(ROOT / "benchmark.py"), "--scripts", str(script), "--append"]
    process = subprocess.Popen(
        command + ["--out", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's Ctrl-C reaches
    )
    for line in process.stdout:  # wait until the script runs
        if "fake script output" in line:
            break
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    results = (out / "results.jsonl").resolve()
    assert err.strip() == f"interrupted during slow.py; 1 record(s) kept in {results}"


def test_without_matplotlib_the_tables_come_first_and_the_chart_is_skipped(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    code, rows, _, printed = tabulate(tmp_path, RECORDS, capsys)
    assert code == 0 and len(rows) == 3 and not (tmp_path / "out" / "results.png").exists()
    assert printed.index("| 04_fabric_bf16true.py") < printed.index("pip install matplotlib")


def test_scripts_are_picked_by_number_file_name_or_default_glob():
    assert [p.name for p in benchmark.find_scripts(["01", "04_fabric_bf16true.py"])] == [
        "01_fabric_baseline.py",
        "04_fabric_bf16true.py",
    ]
    assert benchmark.find_scripts(None) == sorted(ROOT.glob("[0-9][0-9]*_*.py"))


def test_the_runner_passes_other_flags_to_the_scripts():
    args, script_args = benchmark.parse_args(["--seed", "7", "--scripts", "01", "--quick"])
    assert args.scripts == ["01"] and script_args == ["--seed", "7", "--quick"]
    assert benchmark.parse_args(["--seeds", "3"])[0].seeds == [1, 2, 3]
    assert benchmark.parse_args(["--seeds", "3", "5"])[0].seeds == [3, 5]


def test_importing_the_runner_loads_neither_torch_nor_matplotlib():
    check = "import sys, benchmark; print([m for m in ('torch', 'matplotlib') if m in sys.modules])"
    process = subprocess.run(
        [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True
    )
    assert process.stdout.strip() == "[]"


def test_accuracy_on_synthetic_data_is_left_out_of_table_and_ratios(tmp_path):
    _, rows, markdown, _ = tabulate(tmp_path, [{**r, "data": "synthetic"} for r in RECORDS])
    assert "Accuracy on generated data: left out." in markdown and "Test acc." not in markdown
    assert rows[2]["Memory vs 01"] == "0.50x"


def test_repeated_runs_report_each_scripts_median_run(tmp_path):
    runs = [
        record("01_fabric_baseline.py", images_per_s=speed, train_time_s=speed)
        for speed in (90.0, 110.0, 100.0)
    ]
    _, rows, markdown, _ = tabulate(tmp_path, runs + [RECORDS[2]])
    assert len(rows) == 2 and (rows[0]["Training time (s)"], rows[0]["Time/step (s)"]) == (
        "100.0",
        "0.320",
    )
    assert "Several runs of a script: its run of median images/s" in markdown


def test_end_to_end_quick_run_over_two_seeds(tmp_path):
    """The one test that runs real scripts: 01 over two seeds (the paired differences between
    scripts are tested on records above)."""
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # a busy shared CPU slows many threads down
    flags = ["--seeds", "2", "--scripts", "01", "--quick", "--max-steps", "5"]
    process = subprocess.run(
        [sys.executable, str(ROOT / "benchmark.py"), *flags, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "[1/2] 01_fabric_baseline.py --seed 1  (elapsed" in process.stdout
    assert "[2/2] 01_fabric_baseline.py --seed 2" in process.stdout
    assert "left if the rest run as fast as the finished ones)" in process.stdout
    records = benchmark.read_results(out / "results.jsonl")[0]
    seeds = [(r["script"][:2], r["seed"], r["steps"]) for r in records]
    assert seeds == [("01", 1, 5), ("01", 2, 5)]
    rows = table((out / "results.md").read_text())
    assert [row["Result"] for row in rows] == ["ok"]
    assert rows[0]["SD over seeds (points)"] != "–" and rows[0]["Min–max over seeds (%)"] != "–"
    assert rows[0]["First step (s)"] != "–"
    assert (out / "results.png").read_bytes().startswith(PNG_SIGNATURE)


def test_the_mfu_column_says_which_peak_each_script_is_held_against():
    fp32 = {"flops_per_s": 1e11, "label": "of the measured fp32 matmul ceiling"}
    bf16 = {"flops_per_s": 5e9, "label": "of the measured bf16 matmul ceiling"}
    rows = [
        record("01_fabric_baseline.py", mfu_peak=fp32),
        record("04_fabric_bf16true.py", mfu_peak=bf16),
        record("04b_fabric_bf16true_kahan.py", mfu_peak=bf16),
        record("03_fabric_16true.py", mfu=None, mfu_peak=fp32),  # diverged: no MFU
    ]
    assert benchmark.mfu_note(rows) == (
        "MFU: the model's FLOP/s per device of the measured fp32 matmul ceiling for 01; "
        "of the measured bf16 matmul ceiling for 04, 04b."
    )
    assert benchmark.mfu_note([record("01_fabric_baseline.py")]) is None  # older records


def test_sigterm_stops_the_runner_and_its_script_keeps_the_records_and_says_so_in_one_line(
    tmp_path,
):
    """SIGTERM (`kill`, `docker stop`, a scheduler) reaches the runner alone: it passes it on."""
    script, out = fake_script(tmp_path, "slow.py", sleep=30), tmp_path / "out"
    command = [sys.executable, str(ROOT / "benchmark.py"), "--scripts", str(script)]
    process = subprocess.Popen(
        command + ["--out", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:  # wait until the script runs
        if "fake script output" in line:
            script_pid = int(line.split("pid ")[1].rstrip(")\n"))
            break
    process.send_signal(signal.SIGTERM)  # to the runner alone, as `kill` and `docker stop` do
    try:
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130
        results = (out / "results.jsonl").resolve()
        assert err.strip() == f"interrupted during slow.py; 0 record(s) kept in {results}"
        with pytest.raises(ProcessLookupError):  # stopped and waited for: gone
            os.kill(script_pid, 0)
    finally:
        if process.poll() is None:
            process.kill()
        with contextlib.suppress(ProcessLookupError):  # left running by a runner that failed
            os.kill(script_pid, signal.SIGKILL)


@pytest.mark.parametrize("seeds, wrong", [(["3", "-1"], "-1"), (["4294967296"], "4294967296")])
def test_seeds_outside_what_seed_everything_takes_are_refused(tmp_path, capsys, seeds, wrong):
    with pytest.raises(SystemExit, match="2"):
        benchmark.main(["--seeds", *seeds, "--out", str(tmp_path / "out")])
    refusal = capsys.readouterr().err.splitlines()[-1]
    assert refusal.endswith(
        f"error: --seeds: a seed is a whole number from 0 to 4294967295; got {wrong}"
    )
    assert not (tmp_path / "out").exists()


def test_the_runner_takes_the_seeds_the_scripts_take():
    from lightning.fabric.utilities.seed import max_seed_value  # the runner itself needs no torch

    assert max_seed_value == benchmark.MAX_SEED


def test_an_out_folder_that_cannot_be_written_is_refused_in_one_sentence(
    tmp_path, monkeypatch, capsys
):
    """As from a read-only checkout, where the default --out, ./results, cannot be made."""

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(benchmark.Path, "mkdir", read_only)
    monkeypatch.chdir(tmp_path)
    assert benchmark.main(["--scripts", "01", "--quick"]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot write to --out results ({tmp_path}/results: Read-only file system); "
        "name a folder you can write, e.g. --out ~/vit_results\n"
    )
