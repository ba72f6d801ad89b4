"""04c, the compiled 04: it trains like 04 and reports its compile time as the first step; the
dtype report, the NaN diagnosis, --track-updates and DDP work on a compiled model.

04c's quick run (conftest's quick_runs, beside 04's) pays for the one real compilation: about
45 s on two cores with inductor's cache cold, as in CI. The other claims are checked in this
process on --quick's small ViT compiled by dynamo alone (backend="eager"): they concern what
dynamo traces, guards and recompiles, not the kernels inductor writes, and cost seconds
(docs/compile.md)."""

import os
import re
import tempfile

import lightning as L  # before torch.compile: Fabric re-applies a compile with its arguments
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
import torch.utils._triton
from conftest import measured, refusal_in_process

import hardware
from measurement import changed_shares
from model_weights import vit_tiny_32
from nan_check import all_finite, first_nonfinite

SCRIPT_04C, SCRIPT_04 = "04c_fabric_bf16true_compile.py", "04_fabric_bf16true.py"
ONLY_EVALUATION_RECOMPILES = re.compile(  # inference_mode, then the last, smaller batch
    r"GLOBAL_STATE changed: grad_mode|tensor '\w+' size mismatch at index 0"
)


@pytest.fixture(scope="module")
def short_runs(quick_runs):
    """04c's and 04's quick runs: {script: (exit code, stdout, stderr, records)}."""
    return {script: quick_runs[script] for script in (SCRIPT_04C, SCRIPT_04)}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: an earlier test's graphs would count as recompilations."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_04c_trains_to_04s_loss_and_accuracy_in_its_quick_run(short_runs):
    (code, out, err, records), (code_04, out_04, err_04, records_04) = short_runs.values()
    assert code == 0, err
    assert code_04 == 0, err_04
    last = r"Epoch: 001/001 \| Batch 0070/0070 \| Loss: ([\d.]+)"
    losses = [float(re.search(last, output)[1]) for output in (out, out_04)]
    assert abs(losses[0] - losses[1]) < 0.05  # bfloat16 rounds differently in fused kernels
    assert abs(records[-1]["test_acc"] - records_04[-1]["test_acc"]) <= 0.03
    assert records[-1]["test_acc"] >= 0.9


def test_04c_records_its_compile_time_as_a_first_step_far_longer_than_the_steady_state(short_runs):
    _, out, _, records = short_runs[SCRIPT_04C]
    record = records[-1]
    assert record["first_step_s"] > 10 * record["seconds_per_step"]  # 22 s against 0.03 s cold
    assert f"First step: {record['first_step_s']:.2f} s | Steady state:" in out


def test_04c_prints_the_dtypes_in_effect_once_as_04_does(short_runs):
    lines = [
        [line for line in run[1].splitlines() if line.startswith("Precision in effect")]
        for run in short_runs.values()
    ]
    assert (
        lines[0]
        == lines[1]
        == ["Precision in effect: bf16-true | weights bfloat16, matmul outputs bfloat16"]
    )
    assert short_runs[SCRIPT_04C][3][-1]["precision"] == "bf16-true"


def test_04c_breaks_no_graph_and_recompiles_only_for_the_evaluation(short_runs):
    stderr = short_runs[SCRIPT_04C][2]
    assert "Graph break" not in stderr
    reasons = re.findall(r"\[__recompiles\]\s+- \d+/\d+: (.+)", stderr)
    assert reasons  # the evaluation under inference_mode recompiles: the log is on
    assert [reason for reason in reasons if not ONLY_EVALUATION_RECOMPILES.search(reason)] == []


def test_04c_track_updates_names_the_weights_as_04_does(short_runs):
    names = [
        re.findall(r"([\w.]+) [\d.]+%", re.search(r"Weights changed by training: (.*)", run[1])[1])
        for run in short_runs.values()
    ]
    assert names[0] == names[1] and names[0][0] == "all" and len(names[0]) == 4
    assert "_orig_mod" not in short_runs[SCRIPT_04C][1]


def fabric_model(precision, compiled, fullgraph=False):
    """--quick's ViT set up by Fabric on the CPU as the scripts do it; compiled by dynamo alone
    where asked (fullgraph=True turns a graph break into an error)."""
    L.seed_everything(0, verbose=False)
    fabric = L.Fabric(accelerator="cpu", devices=1, precision=precision)
    with fabric.init_module():
        model = vit_tiny_32(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if compiled:
        model = torch.compile(model, backend="eager", fullgraph=fullgraph)
    model, optimizer = fabric.setup(model, optimizer)
    return fabric, model, optimizer


def train_steps(fabric, model, optimizer, steps):
    """`steps` training steps on one fixed batch of 4 images."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4, 3, 32, 32, generator=generator)
    targets = torch.randint(0, 10, (4,), generator=generator)
    for _ in range(steps):
        loss = F.cross_entropy(model(features), targets)
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        optimizer.step()
    return features


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_dtype_report_of_a_compiled_model_is_eagers_without_graph_break_or_recompile(
    capsys, precision
):
    printed = []
    for compiled in (False, True):
        fabric, model, optimizer = fabric_model(precision, compiled, fullgraph=True)
        measurement = measured(precision, fabric.device)
        measurement.watch(model, track_updates=False)
        with torch._dynamo.config.patch(error_on_recompile=True):
            train_steps(fabric, model, optimizer, steps=3)
        out = capsys.readouterr().out
        printed.append([line for line in out.splitlines() if line.startswith("Precision")])
        assert measurement.precision_in_effect == precision
    assert printed[0] == printed[1] and len(printed[1]) == 1
    assert printed[1][0].startswith(f"Precision in effect: {precision} | weights ")


BLOWN_UP = "encoder.layers.encoder_layer_1.mlp.0"  # a Linear of the second block


def break_weights(model, case):
    """Leave a weight NaN after its NaN gradient, NaN after a finite gradient, or so large that
    the forward pass overflows bfloat16 there."""
    layer = model.module.get_submodule(BLOWN_UP)  # Fabric's .module: the model itself
    if case == "forward":
        overflow(layer)
        for parameter in model.parameters():
            parameter.grad = None
        return
    layer.weight.data[0, 0] = float("nan")
    if case == "gradient":
        layer.weight.grad[0, 0] = float("nan")


def overflow(layer):
    """Weights of up to about 3e38, still finite in bfloat16, whose sums of products are not."""
    weights = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(0))
    layer.weight.data.copy_(5e37 * weights.clamp(-6, 6))


@pytest.mark.parametrize("case", ["gradient", "weight", "forward"])
def test_nan_diagnosis_of_a_compiled_model_says_what_it_says_eagerly(case):
    messages = []
    for compiled in (False, True):
        fabric, model, optimizer = fabric_model("bf16-true", compiled)
        features = train_steps(fabric, model, optimizer, steps=1)
        break_weights(model, case)
        with torch._dynamo.config.patch(error_on_recompile=True):  # it must run eagerly
            messages.append(first_nonfinite(model, features, step=2))
    assert messages[0] == messages[1]
    assert BLOWN_UP in messages[1]


def test_compiled_ddp_in_two_processes_reports_dtypes_updates_and_nan_as_eager():
    """Fabric's DDP in two forked gloo processes, the ViT compiled before fabric.setup as in 04c:
    the processes stay in step, and every report says what it says without compiling."""
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(
            compiled_ddp_process, args=(folder,), nprocs=2, join=True, start_method="fork"
        )


def compiled_ddp_process(rank, folder):
    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank)  # Fabric joins these processes instead of starting any
    store = f"file://{folder}/store"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    try:
        reports = [ddp_reports(compiled) for compiled in (False, True)]
        assert reports[0] == reports[1]
    finally:
        dist.destroy_process_group()


def ddp_reports(compiled):
    """The dtypes in effect, the names of the changed weights, the NaN diagnosis and a checksum
    of the weights, the same on both processes, after 2 steps of --quick's ViT in bf16-true DDP."""
    fabric = L.Fabric(accelerator="cpu", devices=2, strategy="ddp", precision="bf16-true")
    fabric.launch()
    L.seed_everything(0, verbose=False)  # the same initial weights on both processes
    with fabric.init_module():
        model = vit_tiny_32(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if compiled:
        model = torch.compile(model, backend="eager")
    model, optimizer = fabric.setup(model, optimizer)
    measurement = measured("bf16-true", fabric.device)
    measurement.watch(model, track_updates=True)
    features = torch.randn(
        4, 3, 32, 32, generator=torch.Generator().manual_seed(fabric.global_rank)
    )
    for _ in range(2):
        loss = F.cross_entropy(model(features), torch.arange(4))
        assert all_finite(loss)
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(loss)
        optimizer.step()
    checksum = sum(parameter.float().sum().item() for parameter in model.parameters())
    assert fabric.all_gather(torch.tensor(checksum)).unique().numel() == 1  # gradients averaged
    names = list(changed_shares(model, measurement.initial_weights))
    overflow(model.module.get_submodule(BLOWN_UP))
    with torch._dynamo.config.patch(error_on_recompile=True):
        diagnosis = first_nonfinite(model, features, step=3)
    return measurement.precision_in_effect, names, diagnosis, round(checksum, 2)


WITHOUT = "or train without torch.compile (04_fabric_bf16true.py is 04c without it)"


def test_04c_without_a_cpp_compiler_stops_before_training_with_one_sentence(monkeypatch, capsys):
    """torch's own search for a C++ compiler, pointed at one that is not there, as on a machine
    without g++ (CXX is read when inductor's config is imported: the config is set instead)."""
    monkeypatch.setattr(torch._inductor.config.cpp, "cxx", (None, "no-such-g++"))
    returncode, stderr = refusal_in_process(SCRIPT_04C, "--quick", "--max-steps", "2")
    assert returncode == 1  # 04c's own problem: the runner goes on with the other scripts
    assert stderr.splitlines() == [
        "error: torch.compile builds C++ kernels for a CPU, and no C++ compiler works here (No "
        "working C++ compiler found in torch._inductor.config.cpp.cxx: (None, 'no-such-g++')); "
        f"install one (apt install g++, or set CXX to one), {WITHOUT}"
    ]
    assert "Epoch: " not in capsys.readouterr().out  # before the first step


@pytest.mark.parametrize(
    "triton, compilers, message",
    [
        (False, {}, "builds GPU kernels with triton, which is not installed or does not support"),
        (True, {}, "triton, which needs a C compiler, and none is here (no $CC, no gcc or clang"),
        (True, {"gcc": "/usr/bin/gcc"}, None),
        (True, {"CC": "/opt/cc"}, None),
    ],
)
def test_a_compiled_model_on_a_gpu_needs_triton_and_a_c_compiler(
    monkeypatch, triton, compilers, message
):
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: triton)
    monkeypatch.setattr(hardware.shutil, "which", compilers.get)
    monkeypatch.delenv("CC", raising=False)
    if "CC" in compilers:
        monkeypatch.setenv("CC", compilers["CC"])
    compiled = torch.compile(vit_tiny_32())  # compiles at its first call: never here
    if message is None:
        hardware.check_compiler(compiled, torch.device("cuda"))
        return
    with pytest.raises(hardware.MissingCompiler, match=re.escape(message)):
        hardware.check_compiler(compiled, torch.device("cuda"))
    uncompiled = vit_tiny_32()
    hardware.check_compiler(uncompiled, torch.device("cuda"))  # needs nothing
    hardware.check_compiler(torch.compile(uncompiled, backend="eager"), torch.device("cuda"))
