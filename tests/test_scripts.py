"""The numbered scripts, run end to end as a user runs them (--quick), their shape and the shape of their diffs."""

import difflib
import re
import subprocess

import pytest
from conftest import ROOT, SCRIPTS, refusal_in_process, run_script

FABRIC_CHAIN = ["01_fabric_baseline.py", "02_fabric_16mixed.py", "03_fabric_16true.py",
                "04_fabric_bf16true.py", "05_fabric_bf16mixed.py"]
ADAM_EPS_FIX = "03b_fabric_16true_adam_eps.py"  # branches off 03, so 03 -> 04 stays one line
KAHAN_ADAM = "04b_fabric_bf16true_kahan.py"  # branches off 04
TRAINING_SCRIPTS = ["00_pytorch_baseline.py", "01_fabric_baseline.py", "02_fabric_16mixed.py",
                    "04_fabric_bf16true.py", KAHAN_ADAM, "05_fabric_bf16mixed.py"]
RECORD_KEYS = {"script", "precision", "device", "model", "epochs", "batch_size", "train_time_s", "images_per_s",
               "seconds_per_step", "peak_memory_gb", "train_acc", "val_acc", "test_acc", "diverged", "versions"}


def code_lines(path):
    """Lines that are neither blank nor comments (docstrings count), as the line budgets are measured."""
    return [line for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


def changed_lines(before, after):
    return [line for line in difflib.ndiff((ROOT / before).read_text().splitlines(),
                                           (ROOT / after).read_text().splitlines()) if line[:2] in ("- ", "+ ")]


def test_every_numbered_script_is_the_baseline_in_the_chain_or_a_lettered_fix():
    assert [script.name for script in SCRIPTS] == ["00_pytorch_baseline.py", *FABRIC_CHAIN[:3], ADAM_EPS_FIX,
                                                   FABRIC_CHAIN[3], KAHAN_ADAM, FABRIC_CHAIN[4]]


@pytest.mark.parametrize("before, after", list(zip(FABRIC_CHAIN, FABRIC_CHAIN[1:])))
def test_fabric_neighbours_differ_by_one_line(before, after):
    removed, added = changed_lines(before, after)
    assert removed.startswith("- PRECISION = ") and added.startswith("+ PRECISION = ")


def test_16true_fix_differs_from_03_by_the_optimizer_line():
    removed, added = changed_lines("03_fabric_16true.py", ADAM_EPS_FIX)
    assert removed.startswith("-     optimizer = torch.optim.Adam(") and ", eps=1e-4)" in added


def test_kahan_branch_differs_from_04_by_the_import_and_the_optimizer_line():
    changes = changed_lines("04_fabric_bf16true.py", KAHAN_ADAM)
    assert [line.split("  #")[0] for line in changes] == [
        "+ from optimi import Adam", "-     optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)",
        "+     optimizer = Adam(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-8)"]


def test_readme_shows_the_real_diffs():
    blocks = re.findall(r"```diff\n\$ diff (\S+) (\S+)\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    assert len(blocks) >= 3  # 01 -> 04, 04 -> 04b, 03 -> 03b
    for before, after, shown in blocks:
        assert shown == subprocess.run(["diff", before, after], cwd=ROOT, capture_output=True, text=True).stdout, after


def test_pytorch_to_fabric_diff_is_only_the_fabric_conversion():
    """00 -> 01: Fabric replaces picking the device, moving batches, set_epoch, backward and printing; nothing else."""
    conversion = re.compile(r"fabric|Fabric|device|accelerator|backward|set_epoch|^ +\)$|^ +(devices|strategy|"
                            r"num_nodes|precision)=|^#|^import lightning")
    before, after = ((ROOT / name).read_text().splitlines() for name in ("00_pytorch_baseline.py", "01_fabric_baseline.py"))
    unexplained = []
    for kind, i1, i2, j1, j2 in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        old, new = before[i1:i2], after[j1:j2]
        if kind == "replace" and len(old) == len(new):  # a line changed in place: either side may name the conversion
            unexplained += [(a, b) for a, b in zip(old, new) if not (conversion.search(a) or conversion.search(b))
                            and a.replace("print(", "fabric.print(", 1) != b]
        elif kind != "equal":
            unexplained += [line for line in old + new if not conversion.search(line)]
    assert unexplained == []
    changes = changed_lines("00_pytorch_baseline.py", "01_fabric_baseline.py")
    assert "-             loss.backward()" in changes and "+             fabric.backward(loss)" in changes
    assert "+     with fabric.init_module():" in changes and "-     with torch.device(device):" in changes
    prints = [line for line in changes if re.match(r"[-+] +(fabric\.)?print\(", line)]
    assert len(prints) == 8  # the steps, progress, epoch and divergence lines: print -> fabric.print, nothing else


@pytest.mark.parametrize("script", [script.name for script in SCRIPTS])
def test_script_itself_shows_model_optimizer_loop_and_report(script):
    text = (ROOT / script).read_text()
    lesson = [r"model = torchvision\.models\.get_model\(args\.model, weights=weights\)",
              r"model\.heads\.head = torch\.nn\.Linear\(model\.heads\.head\.in_features, num_classes\)",
              r"optimizer = (torch\.optim\.)?Adam\(model\.parameters\(\)", r"scheduler = torch\.optim\.lr_scheduler\.",
              r"logits = model\(features\)", r"loss = F\.cross_entropy\(logits, targets\)",
              r"if not all_finite\(loss\):.*\n +return ", r"optimizer\.zero_grad\(", r"optimizer\.step\(\)",
              r"train_accuracy\.update\(", r"scheduler\.step\(\)", r"compute_accuracy\(model, val_loader\)",
              r"start = time\.perf_counter\(\)", r"train_time = time\.perf_counter\(\) - start", r"synchronize\(",
              r"compute_accuracy\(model, test_loader\)", r"report\(args, PRECISION", r"sys\.exit\(DIVERGED_EXIT_CODE\)"]
    if script.startswith("00_"):
        lesson += [r"loss\.backward\(\)", r"with torch\.device\(device\):"]
    else:
        lesson += [r"fabric\.backward\(loss\)", r"L\.Fabric\(", r"precision=PRECISION", r"fabric\.launch\(\)",
                   r"with fabric\.init_module\(\):", r"fabric\.setup\(model, optimizer\)", r"fabric\.setup_dataloaders\("]
    assert [pattern for pattern in lesson if not re.search(pattern, text)] == []


@pytest.mark.parametrize("script", [script.name for script in SCRIPTS])
def test_script_is_within_its_line_budget(script):
    assert 65 <= len(code_lines(ROOT / script)) <= 120


def test_utilities_module_is_within_its_line_budget():
    assert len(code_lines(ROOT / "local_utilities.py")) <= 400


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_quick_run_reaches_90_percent_accuracy(quick_runs, script):
    returncode, _, stderr, records = quick_runs[script]
    assert returncode == 0, stderr
    assert records[-1]["val_acc"] >= 0.9 and records[-1]["test_acc"] >= 0.9


def test_16true_quick_run_is_reported_as_diverged(quick_runs):
    returncode, stdout, stderr, records = quick_runs["03_fabric_16true.py"]
    assert returncode == 3  # DIVERGED_EXIT_CODE: a runner can tell divergence from a crash
    assert records[-1]["diverged"] is True and records[-1]["test_acc"] is None
    assert re.search(r"error: training diverged: .*step \d+", stderr)
    assert "Epoch: 002/003" not in stdout  # stopped at once, no further epochs


@pytest.mark.parametrize("script", [script.name for script in SCRIPTS])
def test_results_record_is_well_formed(quick_runs, script):
    record = quick_runs[script][3][-1]
    assert RECORD_KEYS <= record.keys()
    assert record["script"] == script and record["model"] == "vit_tiny_32" and record["epochs"] == 3
    assert set(record["versions"]) == {"python", "torch", "torchvision", "lightning"}
    assert record["train_time_s"] > 0 and record["peak_memory_gb"] > 0
    assert record["diverged"] or record["images_per_s"] > 0  # a run that diverged in warm-up has no steady state
    for key in ("train_acc", "val_acc", "test_acc"):
        assert record[key] is None if record["diverged"] else 0 <= record[key] <= 1


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_run_prints_versions_device_progress_time_memory_and_accuracy(quick_runs, script):
    stdout = quick_runs[script][1]
    for pattern in [r"torch\s*: \d", r"lightning\s*: \d", r"Device: .+ \| Model: vit_tiny_32",
                    r"Precision in effect: \S+",
                    r"Epoch: 001/003 \| Batch 0001/0070 \| Loss: \d+\.\d{4} \| [\d.]+ img/s( \([\d.]+ s/step\))? \| "
                    r"\d\d:\d\d left",
                    r"Epoch: 003/003 \| Batch 0070/0070 \| .* \| 00:00 left",
                    r"Epoch: 003/003 \| Train acc\.: [\d.]+% \| Val acc\.: [\d.]+%",
                    r"Training time: [\d.]+ min \([\d.]+ s\), including the per-epoch validation \| Steady state: "
                    r"[\d.]+ img/s.* over 205 steps, [\d.]+% of their time waiting for data \| MFU: none \(no "
                    r"datasheet peak FLOP/s for this CPU\)",
                    r"Peak memory: [\d.]+ GB peak RSS growth .*absolute peak RSS",
                    r"Train acc\.: [\d.]+% \| Val acc\.: [\d.]+% \| Test acc\.: [\d.]+%"]:
        assert re.search(pattern, stdout), pattern


@pytest.mark.parametrize("script, precision, weights, matmuls", [
    ("01_fabric_baseline.py", "32-true", "float32", "float32"),
    ("02_fabric_16mixed.py", "bf16-mixed", "float32", "bfloat16"),  # Lightning's fallback on CPU
    ("03_fabric_16true.py", "16-true", "float16", "float16"),
    ("04_fabric_bf16true.py", "bf16-true", "bfloat16", "bfloat16"),
    (KAHAN_ADAM, "bf16-true", "bfloat16", "bfloat16"),
    ("05_fabric_bf16mixed.py", "bf16-mixed", "float32", "bfloat16"),
])
def test_dtypes_in_effect(quick_runs, script, precision, weights, matmuls):
    record = quick_runs[script][3][-1]
    assert (record["precision"], record["weight_dtype"], record["matmul_output_dtype"]) == (precision, weights, matmuls)


def test_16mixed_on_cpu_says_it_runs_as_bf16mixed_and_why(quick_runs):
    stdout = quick_runs["02_fabric_16mixed.py"][1]
    assert "Precision in effect: bf16-mixed (Lightning has no float16 autocast on CPU" in stdout


def test_pytorch_and_fabric_baselines_train_identically(quick_runs):
    def losses_and_accuracies(script):
        return re.findall(r"Loss: [\d.]+|Train acc\.: .*", quick_runs[script][1])
    assert losses_and_accuracies("00_pytorch_baseline.py") == losses_and_accuracies("01_fabric_baseline.py")


def test_quick_run_trains_on_an_image_folder(tmp_path, image_tree):
    returncode, stdout, stderr, records = run_script("04_fabric_bf16true.py", "--quick", "--data-dir", str(image_tree),
                                                     "--batch-size", "4", "--max-steps", "40", cwd=tmp_path)
    assert returncode == 0, stderr
    assert records[-1]["data"] == str(image_tree) and records[-1]["test_acc"] >= 0.9
    # the data holds 8 batches of 4: the run says it trains 8 of the 40 steps, and its last line has nothing left
    assert "Training 8 of the 40 steps asked for" in stdout and records[-1]["steps"] == 8
    assert re.search(r"Epoch: 001/001 \| Batch 0008/0008 .* \| 00:00 left", stdout)


def test_data_order_depends_on_the_seed_and_epoch_not_the_worker_count(tmp_path, image_tree):
    runs = [run_script("01_fabric_baseline.py", "--quick", "--data-dir", str(image_tree), "--batch-size", "4", "--epochs",
                       "2", "--num-workers", workers, cwd=tmp_path, threads=1) for workers in ("0", "2")]
    assert [run[0] for run in runs] == [0, 0], runs[0][2] + runs[1][2]
    losses = [re.findall(r"Epoch: 002/002 \| Batch \d+/\d+ \| Loss: [\d.]+", run[1]) for run in runs]
    assert losses[0] and losses[0] == losses[1]


def test_a_bad_flag_stops_the_script_before_training_with_one_sentence(tmp_path):
    returncode, stdout, stderr, records = run_script("01_fabric_baseline.py", "--batch-size", "0", cwd=tmp_path)
    assert returncode == 2 and stderr.splitlines()[-1].endswith("error: --batch-size: must be a positive whole number, "
                                                                "got 0") and stdout == "" and records == []


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size: must be a positive whole number, got 0"),
    (["--epochs", "-1"], "--epochs: must be a positive whole number, got -1"),
    (["--data-dir", "no/such/folder"], "--data-dir no/such/folder is not a folder"),
    (["--quick", "--synthetic"], "--quick and --synthetic pick different data"),
    (["--quick", "--devices", "2", "--strategy", "fsdp"], "--strategy fsdp needs CUDA GPUs"),
])
def test_bad_flags_get_one_clear_sentence(capsys, flags, message):
    import local_utilities

    with pytest.raises(SystemExit, match="2"):
        local_utilities.parse_args(flags)
    assert message in capsys.readouterr().err


def test_pytorch_baseline_refuses_several_devices():
    returncode, stderr = refusal_in_process("00_pytorch_baseline.py", "--quick", "--devices", "2")
    assert returncode == 1 and stderr.splitlines() == [
        "error: 00_pytorch_baseline.py trains on one device; use a Fabric script (01-05) for several"]


def test_ci_runs_the_readme_test_command():
    readme_command = re.search(r"^(python -m pytest .*)$", (ROOT / "README.md").read_text(), re.MULTILINE).group(1)
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == "python3 " + readme_command.removeprefix("python ")


def test_runner_knows_the_scripts_divergence_exit_code():
    import benchmark
    import local_utilities

    assert benchmark.DIVERGED_EXIT_CODE == local_utilities.DIVERGED_EXIT_CODE  # kept apart so the runner needs no torch
