"""benchmark.py: the table, chart and ratios from recorded results, crash handling, and a real two-script run."""

import json
import os
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
        "versions": {
            "python": "3.11.7",
            "torch": "9.9.9",
            "torchvision": "0.99.0",
            "lightning": "2.6.6",
        },
        **changes,
    }


RECORDS = [
    record("01_fabric_baseline.py"),
    record(
        "03_fabric_16true.py",
        precision="16-true",
        steps=1,
        train_time_s=0.5,
        images_per_s=None,
        data_wait_share=None,
        peak_memory_gb=1.0,
        train_acc=None,
        val_acc=None,
        test_acc=None,
        diverged=True,
        diverged_at="the weights turned non-finite in optimizer step 1",
    ),
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


def table_rows(markdown):
    """The body rows of the Markdown table (header and separator left out)."""
    return [line for line in markdown.splitlines() if line.startswith("|")][2:]


def printed_columns(out, script, below=0):
    """The columns of the terminal line of the ratios that names script, or of the line `below` lines under it."""
    lines = out.splitlines()
    return lines[
        next(number for number, line in enumerate(lines) if line.split()[:1] == [script]) + below
    ].split()


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_from_results_writes_a_png_chart_and_one_table_row_per_record(
    results_file, tmp_path, capsys
):
    assert (
        benchmark.main(["--from-results", str(results_file), "--out", str(tmp_path / "out")]) == 0
    )
    chart = (tmp_path / "out" / "results.png").read_bytes()
    assert chart.startswith(PNG_SIGNATURE) and len(chart) > 20_000
    rows = table_rows((tmp_path / "out" / "results.md").read_text())
    assert [row.split(" | ")[0] for row in rows] == [
        "| 01_fabric_baseline.py",
        "| 03_fabric_16true.py",
        "| 04_fabric_bf16true.py",
    ]
    assert (
        "0.50x" in capsys.readouterr().out
    )  # 04's time per step and memory, printed for the terminal


def test_table_marks_the_diverged_row_and_only_it(results_file):
    records = benchmark.load_records(results_file)
    rows = table_rows(
        benchmark.format_table(records, benchmark.ratios(records), "python benchmark.py")
    )
    assert [row.endswith("| **diverged** |") for row in rows] == [False, True, False]


def test_table_numbers_hardware_versions_and_command_come_from_the_records():
    markdown = benchmark.format_table(
        RECORDS, benchmark.ratios(RECORDS), "python benchmark.py --max-steps 50"
    )
    assert (
        "| 04_fabric_bf16true.py | vit_b_16 | bf16-true | high | 30.0 | 200.0 | 0.160 | 0.50x | 25.0% | 40.0% | "
        "1.00 | 0.50x | 75.0 | 75.0 | 75.0 | ok |"
    ) in markdown  # 0.160 s per step = 32 images / 200 images/s
    assert (
        "| Training time (s) | Images/s | Time/step (s) | Time/step vs 01 | Data wait | MFU | Peak memory (GB) | "
        "Memory vs 01 |"
    ) in markdown
    assert "Test GPU 80GB x 1 process(es)" in markdown and "torch 9.9.9" in markdown
    assert "python benchmark.py --max-steps 50" in markdown


@pytest.mark.parametrize(
    "train_time_s, shown", [(4.9, "4.90"), (60.0, "60.0"), (600.0, "600.0"), (3600.0, "3600.0")]
)
def test_training_time_is_in_seconds_in_every_table_whatever_its_length(train_time_s, shown):
    rows = [record("01_fabric_baseline.py", train_time_s=train_time_s)]
    markdown = benchmark.format_table(rows, benchmark.ratios(rows), "python benchmark.py")
    assert "Training time (s)" in markdown and "(min)" not in markdown
    assert table_rows(markdown)[0].startswith(
        f"| 01_fabric_baseline.py | vit_b_16 | 32-true | high | {shown} |"
    )


@pytest.mark.parametrize(
    "value, shown",
    [
        (1391.54, "1391.5"),
        (12.34, "12.3"),
        (2.7392, "2.74"),
        (2.0, "2.00"),
        (0.021, "0.0210"),
        (0.00123, "0.00123"),
        (None, "–"),
    ],
)
def test_numbers_keep_three_significant_digits_below_ten(value, shown):
    assert benchmark.readable(value) == shown


def test_slow_speeds_print_with_their_digits_not_as_zero(tmp_path, capsys):
    rows = [
        record("01_fabric_baseline.py", images_per_s=0.75),
        record("04_fabric_bf16true.py", images_per_s=0.021),
    ]
    markdown = benchmark.format_table(rows, benchmark.ratios(rows), "python benchmark.py")
    # 0.021 images/s at batch size 32: 1523.8 s per step, 35.71x 01's 42.7 s
    assert "| 60.0 | 0.0210 | 1523.8 | 35.71x |" in table_rows(markdown)[1]
    assert "| 0.0 |" not in markdown
    benchmark.print_ratios(rows, benchmark.ratios(rows))
    assert printed_columns(capsys.readouterr().out, "04_fabric_bf16true.py")[:3] == [
        "04_fabric_bf16true.py",
        "1523.8",
        "35.71x",
    ]


def test_table_chart_and_terminal_compare_the_same_steady_state_time_per_step(capsys):
    # 00 took 1.05x 01's total training time (warm-up and validation included) but 0.80x its steady-state step time
    rows = [
        record("00_pytorch_baseline.py", train_time_s=63.0, images_per_s=125.0),
        record("01_fabric_baseline.py"),
    ]
    comparisons = benchmark.ratios(rows)
    assert comparisons[0]["time_per_step"] == pytest.approx(0.8)
    assert (
        "| 63.0 | 125.0 | 0.256 | 0.80x |"
        in table_rows(benchmark.format_table(rows, comparisons, "python"))[0]
    )
    benchmark.print_ratios(rows, comparisons)
    out = capsys.readouterr().out
    assert "0.80x" in out and "1.05x" not in out and "time per step in steady state" in out
    title, bars = benchmark.chart_panels(rows, comparisons)[0]
    assert title == "Time per step, steady state (s)" and bars[0] == (
        pytest.approx(0.256),
        "0.256  (0.80x)",
    )


@pytest.mark.parametrize(
    "changes, seconds",
    [
        ({}, 0.32),  # 32 images per step / 100 images/s
        (
            {"world_size": 2, "images_per_s": 200.0},
            0.32,
        ),  # 2 processes x 32 images per step / 200 images/s
        ({"seconds_per_step": 0.5}, 0.5),  # the record's own measurement comes first
        ({"images_per_s": None}, None),  # diverged during warm-up: no steady state
    ],
)
def test_time_per_step_is_the_records_own_or_batch_times_processes_over_images_per_s(
    changes, seconds
):
    assert benchmark.seconds_per_step(record("04_fabric_bf16true.py", **changes)) == pytest.approx(
        seconds
    )


def test_memory_ratios_to_a_baseline_below_resolution_are_marked_not_printed(capsys):
    rows = [
        record("01_fabric_baseline.py", peak_memory_gb=0.024),
        record("04_fabric_bf16true.py", peak_memory_gb=0.016),
    ]
    comparisons = benchmark.ratios(
        rows
    )  # 0.016 / 0.024 would print as 0.67x: two readings at the noise floor
    assert [ratio["memory"] for ratio in comparisons] == ["below resolution", "below resolution"]
    markdown = benchmark.format_table(rows, comparisons, "python benchmark.py")
    assert table_rows(markdown)[1].count("| below resolution |") == 1 and "0.67x" not in markdown
    assert (
        "under the memory measurement's resolution (0.1 GB), so a ratio to it would be noise"
        in markdown
    )
    benchmark.print_ratios(rows, comparisons)
    out = capsys.readouterr().out
    assert "below resolution" in out and "0.67x" not in out
    assert benchmark.chart_panels(rows, comparisons)[1][1][1] == (0.016, "0.02  (below resolution)")


def test_a_record_may_state_a_finer_memory_resolution():
    rows = [
        record("01_fabric_baseline.py", peak_memory_gb=0.02, memory_resolution_gb=0.001),
        record("04_fabric_bf16true.py", peak_memory_gb=0.01),
    ]
    assert benchmark.ratios(rows)[1]["memory"] == pytest.approx(0.5)


def test_chart_draws_no_empty_panel():
    titles = [title for title, _ in benchmark.chart_panels(RECORDS, benchmark.ratios(RECORDS))]
    assert titles == ["Time per step, steady state (s)", "Peak memory (GB)", "Test accuracy (%)"]
    synthetic = [benchmark.drop_synthetic_accuracy({**r, "data": "synthetic"}) for r in RECORDS]
    titles = [title for title, _ in benchmark.chart_panels(synthetic, benchmark.ratios(synthetic))]
    assert titles == [
        "Time per step, steady state (s)",
        "Peak memory (GB)",
    ]  # no accuracy on generated data
    crashed = [{"script": "01_fabric_baseline.py", "crashed": True, "exit_code": 1}]
    assert benchmark.chart_panels(crashed, benchmark.ratios(crashed)) == [
        ("Time per step, steady state (s)", [(None, "crashed (exit 1)")])
    ]


KAHAN = record(
    "04b_fabric_bf16true_kahan.py", precision="bf16-true", images_per_s=160.0, peak_memory_gb=1.25
)
ADAM_EPS = record(
    "03b_fabric_16true_adam_eps.py", precision="16-true", images_per_s=50.0, peak_memory_gb=1.0
)


def test_a_lettered_branch_is_also_compared_with_its_parent(capsys):
    rows = RECORDS[:2] + [ADAM_EPS] + RECORDS[2:] + [KAHAN]  # 01, 03 (diverged), 03b, 04, 04b
    comparisons = benchmark.ratios(rows)
    kahan, adam_eps = comparisons[4], comparisons[2]
    # 04b: 0.2 s per step and 1.25 GB, against 01's 0.32 s and 2 GB and against 04's 0.16 s and 1 GB
    assert (kahan["time_per_step"], kahan["memory"]) == (pytest.approx(0.625), pytest.approx(0.625))
    assert kahan["parent"] == "04"
    assert (kahan["parent_time_per_step"], kahan["parent_memory"]) == (
        pytest.approx(1.25),
        pytest.approx(1.25),
    )
    assert adam_eps["parent"] == "03" and (
        adam_eps["parent_time_per_step"],
        adam_eps["parent_memory"],
    ) == (None, None)
    assert [ratio["parent"] for ratio in comparisons[:2] + comparisons[3:4]] == [None, None, None]
    markdown = benchmark.format_table(rows, comparisons, "python benchmark.py")
    assert "| Memory vs 01 | Time/step vs parent | Memory vs parent |" in markdown
    assert (
        "| 0.62x | 1.25x | 1.25x |" in table_rows(markdown)[4]
        and "| 0.50x | – | – |" in table_rows(markdown)[2]
    )
    benchmark.print_ratios(rows, comparisons)
    out = capsys.readouterr().out
    assert printed_columns(out, "03b_fabric_16true_adam_eps.py", below=1) == ["vs", "03", "–", "–"]
    assert printed_columns(out, "04b_fabric_bf16true_kahan.py", below=1) == [
        "vs",
        "04",
        "1.25x",
        "1.25x",
    ]
    assert "1.25x vs 04" in benchmark.chart_panels(rows, comparisons)[0][1][4][1]


@pytest.mark.parametrize(
    "argv, content, message",
    [
        (["--repeats", "0"], None, "error: --repeats must be at least 1, not 0"),
        (["--from-results", "{missing}"], None, "error: --from-results {missing}: no such file"),
        (
            ["--from-results", "{file}"],
            "01_fabric_baseline.py 12.3 s\n",
            "error: {file} line 1 is not JSON",
        ),
        (
            ["--from-results", "{file}"],
            json.dumps(RECORDS[0]) + "\n" + json.dumps({"script": "04.py", "steps": 20}),
            "error: {file} line 2 is not a results record: it lacks precision, device_name, world_size",
        ),
        (["--from-results", "{file}"], "\n", "error: {file} holds no records"),
        (
            ["--from-results", "{file}"],
            json.dumps({**RECORDS[0], "images_per_s": "fast"}) + "\n",
            "error: {file} line 1 is not a results record: images_per_s should be numbers",
        ),
        (
            ["--repeats", "2", "--out", "{file}"],
            "a file\n",
            "error: --out {file} is a file; give a folder",
        ),
    ],
    ids=[
        "repeats 0",
        "missing file",
        "not JSON",
        "record lacks keys",
        "no records",
        "a value not a number",
        "out is a file",
    ],
)
def test_bad_runner_input_stops_with_one_sentence_and_exit_2(
    tmp_path, capsys, argv, content, message
):
    paths = {"missing": tmp_path / "missing.jsonl", "file": tmp_path / "bad.jsonl"}
    if content is not None:
        paths["file"].write_text(content)
    with pytest.raises(SystemExit) as stop:
        benchmark.main(
            ["--out", str(tmp_path / "out")] + [arg.format(**paths) for arg in argv]
        )  # a later --out wins
    assert stop.value.code == 2
    assert message.format(**paths) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # stopped before writing anything


def test_time_left_is_estimated_from_the_finished_scripts_and_says_so(
    tmp_path, monkeypatch, capsys
):
    now, durations = [0.0], {"fast.py": 10.0, "slow.py": 300.0}

    def run_script(script, script_args, results_file):  # takes its duration on a fake clock
        now[0] += durations[script.name]
        return record(script.name)

    monkeypatch.setattr(benchmark, "run_script", run_script)
    monkeypatch.setattr(
        benchmark,
        "time",
        SimpleNamespace(perf_counter=lambda: now[0], strftime=time.strftime, gmtime=time.gmtime),
    )
    benchmark.run_all(
        [Path("fast.py"), Path("slow.py"), Path("fast.py")], [], tmp_path / "results.jsonl"
    )
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")] == [
        "[1/3] fast.py  (elapsed 00:00)",
        "[2/3] slow.py  (elapsed 00:10; about 00:20 left if the rest run as fast as the finished ones)",
        "[3/3] fast.py  (elapsed 05:10; about 02:35 left if the rest run as fast as the finished ones)",
    ]


def test_ratios_to_the_01_baseline_are_exact_and_absent_for_a_diverged_run():
    baseline, diverged, bf16 = benchmark.ratios(RECORDS)
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
    assert [r["data_wait_share"] for r in (baseline, diverged, bf16)] == [0.125, None, 0.25]


def test_no_ratios_without_a_baseline_record():
    assert all(
        r["time_per_step"] is None and r["memory"] is None for r in benchmark.ratios(RECORDS[1:])
    )


FAKE_SCRIPT = """import json, sys
results = sys.argv[sys.argv.index("--results") + 1]
if {write}:
    record = {record!r}
    record.update(script=sys.argv[0].rsplit("/", 1)[-1], argv=sys.argv[1:])
    open(results, "a").write(json.dumps(record) + "\\n")
print("fake script output")
sys.exit({exit_code})
"""


def fake_script(folder, name, exit_code, write=True, **changes):
    path = folder / name
    path.write_text(
        FAKE_SCRIPT.format(write=write, record=record(name, **changes), exit_code=exit_code)
    )
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


def test_a_crashed_script_is_marked_and_the_runner_carries_on_then_exits_nonzero(tmp_path):
    crash, good = (
        fake_script(tmp_path, "crash.py", 1, write=False),
        fake_script(tmp_path, "good.py", 0),
    )
    out = tmp_path / "out"
    assert (
        benchmark.main(
            ["--scripts", str(crash), str(good), "--out", str(out), "--quick", "--max-steps", "20"]
        )
        == 1
    )
    rows = table_rows((out / "results.md").read_text())
    assert rows[0].startswith("| crash.py |") and rows[0].endswith("| **crashed (exit 1)** |")
    assert rows[1].startswith("| good.py |") and rows[1].endswith("| ok |")
    records = benchmark.load_records(out / "results.jsonl")
    assert [(r["script"], r["argv"][:-2]) for r in records] == [
        ("good.py", ["--quick", "--max-steps", "20"])
    ]
    assert (out / "results.png").read_bytes().startswith(PNG_SIGNATURE)


def test_scripts_are_picked_by_number_file_name_or_default_glob():
    assert [p.name for p in benchmark.find_scripts(["01", "04_fabric_bf16true.py"])] == [
        "01_fabric_baseline.py",
        "04_fabric_bf16true.py",
    ]
    assert benchmark.find_scripts(None) == sorted(ROOT.glob("[0-9][0-9]*_*.py"))
    with pytest.raises(SystemExit, match="no script matches '99'"):
        benchmark.find_scripts(["99"])


def test_the_runner_sets_results_itself_and_refuses_it_as_a_pass_through_flag():
    with pytest.raises(SystemExit, match="2"):
        benchmark.parse_args(["--quick", "--results", "elsewhere.jsonl"])
    args, script_args = benchmark.parse_args(["--model", "vit_b_16", "--scripts", "01", "--quick"])
    assert args.scripts == ["01"] and script_args == ["--model", "vit_b_16", "--quick"]


def test_importing_the_runner_loads_neither_torch_nor_matplotlib():
    check = "import sys, benchmark; print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))"
    assert (
        subprocess.run(
            [sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        == "[]"
    )


def test_end_to_end_quick_run_of_01_and_04(tmp_path):
    out = tmp_path / "out"
    env = dict(
        os.environ, OMP_NUM_THREADS="1"
    )  # one thread: a busy shared CPU slows multi-threaded torch many times over
    process = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmark.py"),
            "--scripts",
            "01",
            "04",
            "--out",
            str(out),
            "--quick",
            "--max-steps",
            "20",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert (
        "[1/2] 01_fabric_baseline.py" in process.stdout
        and "[2/2] 04_fabric_bf16true.py" in process.stdout
    )
    assert (
        "left if the rest run as fast as the finished ones)" in process.stdout
    )  # the estimate after the first script
    records = benchmark.load_records(out / "results.jsonl")
    assert [r["script"] for r in records] == ["01_fabric_baseline.py", "04_fabric_bf16true.py"]
    assert [r["steps"] for r in records] == [20, 20]
    rows = table_rows((out / "results.md").read_text())
    assert len(rows) == 2 and all(row.endswith("| ok |") for row in rows)
    assert (out / "results.png").read_bytes().startswith(PNG_SIGNATURE)


def test_accuracy_on_synthetic_data_is_left_out_of_table_and_ratios(tmp_path):
    path = tmp_path / "synthetic.jsonl"
    path.write_text("".join(json.dumps({**r, "data": "synthetic"}) + "\n" for r in RECORDS))
    assert benchmark.main(["--from-results", str(path), "--out", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "Accuracy on generated data means nothing" in markdown
    assert table_rows(markdown)[2].endswith(
        "| 0.50x | ok |"
    )  # 04: memory ratio kept, accuracy columns dropped
    assert "Test acc." not in markdown


def test_repeated_runs_report_each_scripts_median_run(tmp_path):
    runs = [
        record("01_fabric_baseline.py", images_per_s=speed, train_time_s=speed)
        for speed in (90.0, 110.0, 100.0)
    ]
    path = tmp_path / "repeated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in runs + [RECORDS[2]]))
    assert benchmark.main(["--from-results", str(path), "--out", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "results.md").read_text()
    rows = table_rows(markdown)
    assert (
        len(rows) == 2
        and "| 100.0 | 0.320 | 1.00x |" in rows[0]
        and rows[0].endswith("| 90.0, 110.0, 100.0 |")
    )
    assert "its row is the run with the median images/s" in markdown
