"""04d and float8_training.py: which layers convert, their share of the FLOPs, what ran in float8,
the refusals before training, and the quick run's accuracy."""

import re

import pytest
import torch
import torchvision
from conftest import refusal_in_process
from test_benchmark import record

import benchmark
import float8_training
from float8_training import (
    check_float8,
    convert_to_float8_training,
    describe_float8_layers,
    float8_filter,
    float8_layers,
    float8_share,
    multiple_of_16,
)
from hardware import PrecisionUnavailable
from model_weights import vit_tiny_32

FP8 = "04d_fabric_bf16true_fp8.py"


def linear(in_features, out_features):
    return torch.nn.Linear(in_features, out_features, device="meta")


def test_filter_converts_sizes_in_multiples_of_16_and_skips_the_10_class_head():
    assert multiple_of_16(linear(1024, 4096), "encoder.layers.encoder_layer_0.mlp.0")
    assert multiple_of_16(linear(4096, 1024), "encoder.layers.encoder_layer_0.mlp.3")
    assert not multiple_of_16(linear(1024, 10), "heads.head")  # the new head: CUDA would refuse it
    assert not multiple_of_16(linear(1000, 4096), "odd input")
    assert not multiple_of_16(linear(1024, 4104), "odd output")
    assert not multiple_of_16(torch.nn.Conv2d(3, 1024, 16, device="meta"), "conv_proj")


def vit_l_16_on_meta():
    """vit_l_16 with the scripts' new 10-class head, built on the meta device: no memory."""
    with torch.device("meta"):
        model = torchvision.models.vit_l_16()
        model.heads.head = torch.nn.Linear(model.hidden_dim, 10)
    return model


def vit_forward_flops(model):
    """(all, MLP) forward FLOPs of one image through a torchvision ViT, by hand: 2 per
    multiply-add, the patch convolution, per block the attention's in- and out-projections, its
    two batched products (scores, weighted values) and the MLP's two linears, then the head."""
    tokens = (model.image_size // model.patch_size) ** 2 + 1  # the patches and the class token
    width, mlp = model.hidden_dim, model.mlp_dim
    patches = 2 * (tokens - 1) * width * 3 * model.patch_size**2
    attention = 2 * tokens * width * 3 * width + 2 * 2 * tokens * tokens * width
    attention += 2 * tokens * width * width
    mlp_block = 2 * 2 * tokens * width * mlp
    blocks = len(model.encoder.layers)
    head = 2 * width * model.heads.head.out_features
    return patches + blocks * (attention + mlp_block) + head, blocks * mlp_block


def test_mlp_blocks_are_64_4_percent_of_vit_l_16_forward_flops():
    model = vit_l_16_on_meta()
    total, mlp = vit_forward_flops(model)
    share = float8_share(model)
    assert share == pytest.approx(mlp / total, rel=1e-9)  # the counter agrees with the sums by hand
    assert round(share, 3) == 0.644
    assert 1 / (1 - share / 2) == pytest.approx(1.475, abs=5e-4)  # matmuls twice as fast: the cap


def test_only_the_mlp_linears_run_in_float8_attention_out_proj_is_converted_but_not_called():
    model = vit_tiny_32().to(torch.bfloat16)
    model.heads.head = torch.nn.Linear(model.hidden_dim, 10, dtype=torch.bfloat16)
    convert_to_float8_training(model, module_filter_fn=multiple_of_16)
    layers = float8_layers(model)
    assert layers == {
        "float8": {"encoder.layers.mlp.0": 3, "encoder.layers.mlp.3": 3},
        "unused": {"encoder.layers.self_attention.out_proj": 3},
    }
    assert type(model.heads.head) is torch.nn.Linear  # 10 outputs: left in bfloat16
    called = []
    for name, module in model.named_modules():
        if isinstance(module, float8_training.Float8Linear):
            module.register_forward_hook(lambda *_, name=name: called.append(name))
    model(torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)).sum().backward()  # a real step's pass
    assert len(called) == 6 and all(re.search(r"\.mlp\.[03]$", name) for name in called)
    assert describe_float8_layers(layers) == (
        "float8 matmuls in 6 layers (3 x encoder.layers.mlp.0, 3 x encoder.layers.mlp.3); "
        "converted but not called, so bfloat16: 3 x encoder.layers.self_attention.out_proj"
    )


def test_a_missing_torchao_gets_one_sentence_before_training(monkeypatch, capsys):
    monkeypatch.setattr(float8_training, "convert_to_float8_training", None)
    returncode, stderr = refusal_in_process(FP8, "--quick")
    assert "Epoch" not in capsys.readouterr().out
    # 1, not 2: the runner reads 2 as a problem every script shares and stops the other scripts
    assert returncode == 1
    assert stderr.splitlines()[-1] == (
        "error: float8 training needs torchao, which is not installed: pip install "
        "torchao==0.18.0 (or pip install -r requirements.txt)"
    )


def test_torch_older_than_torchao_needs_is_refused(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.10.0+cu128")
    with pytest.raises(PrecisionUnavailable) as error:
        check_float8(torch.device("cpu"))
    assert str(error.value) == (
        "torchao's float8 training needs torch 2.11.0 or newer, found 2.10.0+cu128; upgrade "
        "torch (pytorch.org), or run 04_fabric_bf16true.py"
    )


@pytest.mark.parametrize("capability, refused", [((8, 0), True), ((8, 9), False), ((9, 0), False)])
def test_a_gpu_below_compute_capability_8_9_is_refused(monkeypatch, capability, refused):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA A100-SXM4-80GB")
    if not refused:
        check_float8(torch.device("cuda", 0))
        return
    with pytest.raises(PrecisionUnavailable) as error:
        check_float8(torch.device("cuda", 0))
    assert str(error.value) == (
        "NVIDIA A100-SXM4-80GB (compute capability 8.0) has no float8 tensor cores, which need 8.9 "
        "or higher (Ada, Hopper, Blackwell); run 04_fabric_bf16true.py on this GPU instead"
    )


def test_filter_stops_the_run_on_a_refusal_and_says_on_a_cpu_that_float8_is_emulated(
    monkeypatch, capsys
):
    model = vit_tiny_32()
    model.heads.head = torch.nn.Linear(model.hidden_dim, 10)  # as the scripts replace it
    assert float8_filter(model, torch.device("cpu")) is multiple_of_16
    out = capsys.readouterr().out
    assert "42.2% of the forward FLOPs run in float8" in out
    assert (
        "Note: on a CPU float8 is emulated: torch._scaled_mm turns float8 into float32 to "
        "multiply, so this run shows float8's numbers, not its speed" in out
    )
    with pytest.raises(PrecisionUnavailable) as refused:
        float8_filter(model, torch.device("mps"))
    assert str(refused.value) == (
        "torchao's float8 training runs on CUDA GPUs and CPUs, not on mps; run "
        "04_fabric_bf16true.py instead"
    )


def test_quick_run_trains_to_04s_accuracy_bar_with_float8_mlp_matmuls(quick_runs):
    returncode, stdout, stderr, records = quick_runs[FP8]
    assert returncode == 0, stderr
    assert records[-1]["val_acc"] >= 0.9 and records[-1]["test_acc"] >= 0.9
    losses = [float(loss) for loss in re.findall(r"Loss: ([\d.]+)", stdout)]
    assert losses[-1] < losses[0] / 2
    assert (records[-1]["precision"], records[-1]["weight_dtype"]) == ("bf16-true", "bfloat16")
    assert "float8 training (torchao): " in stdout and "float8 is emulated" in stdout
    assert (  # the dtype report, from the layers that ran
        "float8 matmuls in 6 layers (3 x encoder.layers.mlp.0, 3 x encoder.layers.mlp.3)" in stdout
    )


def test_runner_compares_04d_with_04():
    rows = [record("04_fabric_bf16true.py"), record(FP8, images_per_s=50.0)]
    assert benchmark.ratios(rows)[1]["parent"] == "04"
    assert benchmark.ratios(rows)[1]["parent_time_per_step"] == pytest.approx(2.0)
    assert [path.name for path in benchmark.find_scripts(["04d"])] == [FP8]


def test_requirements_name_torchao_for_04d():
    requirements = (benchmark.REPO / "requirements.txt").read_text()
    assert re.search(r"^torchao>=0\.18 .*04d", requirements, re.MULTILINE)
