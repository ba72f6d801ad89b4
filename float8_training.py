"""Float8 matmuls with torchao (04d): which linear layers convert, their share of the FLOPs, what
ran in float8, and whether this machine can train that way at all."""

import itertools
import re
from collections import Counter
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from hardware import PrecisionUnavailable
from processes import print_once

try:  # 04d imports torchao's function from here, so that a missing torchao gets one sentence
    from torchao.float8 import convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear
    from torchao.utils import torch_version_at_least
except ImportError:
    convert_to_float8_training = None  # check_float8 stops the run before 04d would call it

# torch._scaled_mm on CUDA needs both sizes of each matrix divisible by 16 (its checks in
# aten/src/ATen/native/cuda/Blas.cpp; torchao/float8/float8_linear_utils.py filters on the same)
MULTIPLE = 16
FLOAT8_CAPABILITY = (8, 9)  # Ada (8.9) and Hopper (9.0) are the first GPUs with float8 tensor cores
TORCH_FLOOR = "2.11.0"  # torchao 0.18 loads its kernels only from torch 2.11 (torchao/__init__.py)
INSTALL = "pip install torchao==0.18.0 (or pip install -r requirements.txt)"
# torchvision's ViT names its blocks encoder.layers.encoder_layer_<index>: one kind per layer name
BLOCK_INDEX = re.compile(r"encoder_layer_\d+\.")


def multiple_of_16(module: torch.nn.Module, fqn: str) -> bool:
    """convert_to_float8_training's module_filter_fn: a linear layer whose input and output sizes
    are both multiples of 16, which CUDA's float8 matmul needs (the CPU's does not check)."""
    if not isinstance(module, torch.nn.Linear):
        return False
    return module.in_features % MULTIPLE == 0 and module.out_features % MULTIPLE == 0


def check_float8(device: torch.device) -> None:
    """Errors: PrecisionUnavailable when torchao is missing, torch is older than torchao needs, or
    the device is a GPU without float8 tensor cores (compute capability below 8.9) or no CPU or
    GPU. Not InputError: only 04d needs float8, and the runner goes on to the next script."""
    if convert_to_float8_training is None:
        raise PrecisionUnavailable(
            f"float8 training needs torchao, which is not installed: {INSTALL}"
        )
    if not torch_version_at_least(TORCH_FLOOR):
        raise PrecisionUnavailable(
            f"torchao's float8 training needs torch {TORCH_FLOOR} or newer, found "
            f"{torch.__version__}; upgrade torch (pytorch.org), or run 04_fabric_bf16true.py"
        )
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < FLOAT8_CAPABILITY:
            raise PrecisionUnavailable(
                f"{torch.cuda.get_device_name(device)} (compute capability "
                f"{capability[0]}.{capability[1]}) has no float8 tensor cores, which need 8.9 or "
                "higher (Ada, Hopper, Blackwell); run 04_fabric_bf16true.py on this GPU instead"
            )
    elif device.type != "cpu":
        raise PrecisionUnavailable(
            f"torchao's float8 training runs on CUDA GPUs and CPUs, not on {device.type}; "
            "run 04_fabric_bf16true.py instead"
        )


def forward_flops(model: torch.nn.Module) -> dict[str, int]:
    """The forward FLOPs of one image, per module that ran (its name in named_modules(); "" for
    the whole model). Counted by torch.utils.flop_counter.FlopCounterMode (2 FLOPs per
    multiply-add) on meta copies of the weights: no arithmetic, no memory. A torchvision ViT."""
    meta = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())
    }
    dtype = next(model.parameters()).dtype
    images = torch.empty(1, 3, model.image_size, model.image_size, device="meta", dtype=dtype)
    counter = FlopCounterMode(display=False)
    with counter:
        torch.func.functional_call(model, meta, (images,))
    root = type(model).__name__  # the counter names modules "<root class>.<name>"
    flops = {}
    for name, counts in counter.get_flop_counts().items():
        if name == root:
            flops[""] = sum(counts.values())
        elif name.startswith(root + "."):
            flops[name.removeprefix(root + ".")] = sum(counts.values())
    return flops


def float8_share(model: torch.nn.Module, converts=multiple_of_16) -> float:
    """The share of the model's forward FLOPs in the linear layers `converts` accepts and that run
    as modules (torchvision's attention passes its out_proj weight to a function instead)."""
    flops = forward_flops(model)
    converted = 0
    for name, module in model.named_modules():
        if name in flops and converts(module, name):
            converted += flops[name]
    return converted / flops[""]


def float8_layers(model: torch.nn.Module) -> dict[str, Counter]:
    """After convert_to_float8_training: the converted layers, counted per kind (the name without
    the block index): {"float8": those whose matmuls run in float8, "unused": those converted but
    never called, whose weights go to F.multi_head_attention_forward in bfloat16}."""
    ran = forward_flops(model)
    layers = {"float8": Counter(), "unused": Counter()}
    for name, module in model.named_modules():
        if isinstance(module, Float8Linear):
            kind = "float8"
            if name not in ran:
                kind = "unused"
            layers[kind][BLOCK_INDEX.sub("", name)] += 1
    return layers


def describe_float8_layers(layers: dict[str, Counter]) -> str:
    """float8_layers as one line for the dtype report, e.g. 'float8 matmuls in 48 layers (24 x
    encoder.layers.mlp.0, 24 x encoder.layers.mlp.3); converted but not called: 24 x ...'."""
    texts = {}
    for kind, counts in layers.items():
        texts[kind] = ", ".join(f"{count} x {name}" for name, count in sorted(counts.items()))
    line = f"float8 matmuls in {sum(layers['float8'].values())} layers ({texts['float8']})"
    if layers["unused"]:
        line += f"; converted but not called, so bfloat16: {texts['unused']}"
    return line


def float8_filter(model: torch.nn.Module, device: torch.device) -> Callable:
    """Check that this machine can train in float8, print the share of the forward FLOPs that
    will run in float8 (and, on a CPU, that float8 is emulated there); return multiple_of_16.

    Errors: PrecisionUnavailable, from check_float8.
    """
    check_float8(device)
    share = float8_share(model)
    print_once(
        f"float8 training (torchao): the linear layers with sizes in multiples of {MULTIPLE} "
        f"convert; {share:.1%} of the forward FLOPs run in float8, the rest in bfloat16"
    )
    if device.type == "cpu":  # aten/src/ATen/native/Blas.cpp: _scaled_mm_out_cpu_emulated
        print_once(
            "Note: on a CPU float8 is emulated: torch._scaled_mm turns float8 into float32 to "
            "multiply, so this run shows float8's numbers, not its speed"
        )
    return multiple_of_16
