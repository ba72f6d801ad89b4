"""benchmark.py: the table, chart and ratios from recorded results, crash handling, and a real two-script run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import benchmark  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def record(script, **changes):
    """A results record as the scripts write it; the numbers are chosen so the ratios are exact."""
    return {"script": script, "precision": "32-true", "precision_requested": "32-true", "device": "cuda",
            "device_name": "Test GPU 80GB", "world_size": 1, "model": "vit_b_16", "data": "cifar10", "epochs": 1,
            "batch_size": 32, "steps": 50, "matmul_precision": "high", "train_time_s": 60.0, "images_per_s": 100.0,
            "data_wait_share": 0.125, "flops_per_image": 1.0e10, "mfu": 0.4, "peak_memory_gb": 2.0,
            "memory_measure": "2.00 GB allocated (max_memory_allocated), 2.50 GB reserved", "weight_dtype": "float32",
            "matmul_output_dtype": "float32", "train_acc": 0.5, "val_acc": 0.5, "test_acc": 0.5, "diverged": False,
            "diverged_at": None, "versions": {"python": "3.11.7", "torch": "9.9.9", "torchvision": "0.99.0",
                                              "lightning": "2.6.6"}, **changes}


RECORDS = [
    record("01_fabric_baseline.py"),
    record("03_fabric_16true.py", precision="16-true", steps=1, train_time_s=0.5, images_per_s=None,
           data_wait_share=None, peak_memory_gb=1.0, train_acc=None, val_acc=None, test_acc=None, diverged=True,
           diverged_at="the weights turned non-finite in optimizer step 1"),
    record("04_fabric_bf16true.py", precision="bf16-true", train_time_s=30.0, images_per_s=200.0, peak_memory_gb=1.0,
           data_wait_share=0.25, train_acc=0.75, val_acc=0.75, test_acc=0.75),
]


def table_rows(markdown):
    """The body rows of the Markdown table (header and separator left out)."""
    return [line for line in markdown.splitlines() if line.startswith("|")][2:]


@pytest.fixture
def results_file(tmp_path):
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def test_from_results_writes_a_png_chart_and_one_table_row_per_record(results_file, tmp_path, capsys):
    assert benchmark.main(["--from-results", str(results_file), "--out", str(tmp_path / "out")]) == 0
    chart = (tmp_path / "out" / "results.png").read_bytes()
    assert chart.startswith(PNG_SIGNATURE) and len(chart) > 20_000
    rows = table_rows((tmp_path / "out" / "results.md").read_text())
    assert [row.split(" | ")[0] for row in rows] == ["| 01_fabric_baseline.py", "| 03_fabric_16true.py",
                                                      "| 04_fabric_bf16true.py"]
    assert "0.50x" in capsys.readouterr().out  # 04's time per step and memory, printed for the terminal


def test_table_marks_the_diverged_row_and_only_it(results_file):
    records = benchmark.load_records(results_file)
    rows = table_rows(benchmark.format_table(records, benchmark.ratios(records), "python benchmark.py"))
    assert [row.endswith("| **diverged** |") for row in rows] == [False, True, False]


def test_table_numbers_hardware_versions_and_command_come_from_the_records():
    markdown = benchmark.format_table(RECORDS, benchmark.ratios(RECORDS), "python benchmark.py --max-steps 50")
    assert ("| 04_fabric_bf16true.py | vit_b_16 | bf16-true | high | 30.0 | 200.0 | 0.50x | 25.0% | 40.0% | 1.00 | "
            "0.50x | 75.0 | 75.0 | 75.0 | ok |") in markdown
    assert "Training time (s)" in markdown
    assert "Test GPU 80GB x 1 process(es)" in markdown and "torch 9.9.9" in markdown
    assert "python benchmark.py --max-steps 50" in markdown


def test_table_gives_long_training_times_in_minutes():
    rows = [record("01_fabric_baseline.py", train_time_s=600.0)]
    markdown = benchmark.format_table(rows, benchmark.ratios(rows), "python benchmark.py")
    assert "Training time (min)" in markdown and "| 10.0 |" in markdown


def test_ratios_to_the_01_baseline_are_exact_and_absent_for_a_diverged_run():
    baseline, diverged, bf16 = benchmark.ratios(RECORDS)
    assert (bf16["time_per_step"], bf16["memory"], bf16["test_acc_points"]) == (0.5, 0.5, 25.0)
    assert (baseline["time_per_step"], baseline["memory"], baseline["test_acc_points"]) == (1.0, 1.0, 0.0)
    assert (diverged["time_per_step"], diverged["memory"], diverged["test_acc_points"]) == (None, None, None)
    assert [r["data_wait_share"] for r in (baseline, diverged, bf16)] == [0.125, None, 0.25]


def test_no_ratios_without_a_baseline_record():
    assert all(r["time_per_step"] is None and r["memory"] is None for r in benchmark.ratios(RECORDS[1:]))


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
    path.write_text(FAKE_SCRIPT.format(write=write, record=record(name, **changes), exit_code=exit_code))
    return path


@pytest.mark.parametrize("exit_code, write, diverged, expected", [
    (1, False, False, "crashed (exit 1)"),
    (1, True, False, "crashed (exit 1)"),  # a record, but the script failed afterwards
    (0, False, False, "crashed (exit 0, no record)"),
    (3, True, True, "diverged"),
    (0, True, False, "ok"),
])
def test_run_script_outcome_follows_exit_code_and_record(tmp_path, exit_code, write, diverged, expected):
    script = fake_script(tmp_path, "fake.py", exit_code, write, diverged=diverged)
    row = benchmark.run_script(script, [], tmp_path / "results.jsonl")
    assert benchmark.outcome(row) == expected


def test_a_crashed_script_is_marked_and_the_runner_carries_on_then_exits_nonzero(tmp_path):
    crash, good = fake_script(tmp_path, "crash.py", 1, write=False), fake_script(tmp_path, "good.py", 0)
    out = tmp_path / "out"
    assert benchmark.main(["--scripts", str(crash), str(good), "--out", str(out), "--quick", "--max-steps", "20"]) == 1
    rows = table_rows((out / "results.md").read_text())
    assert rows[0].startswith("| crash.py |") and rows[0].endswith("| **crashed (exit 1)** |")
    assert rows[1].startswith("| good.py |") and rows[1].endswith("| ok |")
    records = benchmark.load_records(out / "results.jsonl")
    assert [(r["script"], r["argv"][:-2]) for r in records] == [("good.py", ["--quick", "--max-steps", "20"])]
    assert (out / "results.png").read_bytes().startswith(PNG_SIGNATURE)


def test_scripts_are_picked_by_number_file_name_or_default_glob():
    assert [p.name for p in benchmark.find_scripts(["01", "04_fabric_bf16true.py"])] == [
        "01_fabric_baseline.py", "04_fabric_bf16true.py"]
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
    assert subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


def test_end_to_end_quick_run_of_01_and_04(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread: a busy shared CPU slows multi-threaded torch many times over
    process = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--scripts", "01", "04", "--out", str(out),
                              "--quick", "--max-steps", "20"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert "[1/2] 01_fabric_baseline.py" in process.stdout and "[2/2] 04_fabric_bf16true.py" in process.stdout
    assert "left)" in process.stdout  # the time-left estimate after the first script
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
    assert table_rows(markdown)[2].endswith("| 0.50x | ok |")  # 04: memory ratio kept, accuracy columns dropped
    assert "Test acc." not in markdown


def test_repeated_runs_report_each_scripts_median_run(tmp_path):
    runs = [record("01_fabric_baseline.py", images_per_s=speed, train_time_s=speed) for speed in (90.0, 110.0, 100.0)]
    path = tmp_path / "repeated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in runs + [RECORDS[2]]))
    assert benchmark.main(["--from-results", str(path), "--out", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "results.md").read_text()
    rows = table_rows(markdown)
    assert len(rows) == 2 and "| 100.0 | 1.00x |" in rows[0] and rows[0].endswith("| 90.0, 110.0, 100.0 |")
    assert "its row is the run with the median images/s" in markdown
