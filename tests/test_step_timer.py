"""step_timer.py: speeds with their significant digits, the time left, the steady state."""

import pytest
import torch

from step_timer import StepTimer, speed


@pytest.mark.parametrize(
    "images_per_s, seconds_per_step, text",
    [
        (1391.46, 0.023, "1391.5 img/s"),
        (5.94, 1.35, "5.94 img/s (1.35 s/step)"),
        (0.0213, 375.6, "0.0213 img/s (375.60 s/step)"),  # never "0.0 img/s"
    ],
)
def test_speeds_keep_three_significant_digits_and_slow_steps_show_seconds(
    images_per_s, seconds_per_step, text
):
    assert speed(images_per_s, seconds_per_step) == text


def timer(total_steps, warmup_steps, batch_size):
    """A StepTimer of one epoch of total_steps steps on the CPU."""
    return StepTimer(torch.device("cpu"), total_steps, 1, batch_size, warmup_steps)


def test_time_left_leaves_the_slow_warmup_out_and_carries_seconds_into_minutes():
    steps = timer(total_steps=12, warmup_steps=2, batch_size=32)
    steps.add(40.0, data_wait=0.0)  # warm-up: first-call kernels and allocations
    # still warming up: 11 steps at the last one's 40 s
    assert steps.progress() == "0.800 img/s (40.00 s/step) | 07:20 left"
    steps.add(20.0, data_wait=0.0)
    steps.add(5.98, data_wait=0.5)
    # 9 steps at the steady 5.98 s: 53.8 s
    assert steps.progress() == "5.35 img/s (5.98 s/step) | 00:54 left"
    steps.add(6.02, data_wait=0.5)
    assert steps.progress().endswith("| 00:48 left")
    assert steps.steady_steps == 2 and steps.steady_data_wait == 1.0
    steps = timer(total_steps=2, warmup_steps=0, batch_size=1)
    steps.add(59.6, 0.0)
    assert steps.progress().endswith("| 01:00 left")  # never "00:60"


def test_a_run_no_longer_than_its_warmup_is_all_steady_state():
    steps = timer(total_steps=3, warmup_steps=5, batch_size=1)
    for step_time in (3.0, 1.0, 2.0):
        steps.add(step_time, data_wait=0.0)
    assert (steps.steady_steps, steps.steady_time) == (3, 6.0)


def test_position_names_the_epoch_and_the_step_under_way():
    steps = StepTimer(
        torch.device("cpu"), steps_per_epoch=4, epochs=3, batch_size=1, warmup_steps=0
    )
    assert steps.position() == "epoch 1, step 1"
    for _ in range(5):
        steps.add(1.0, 0.0)
    assert steps.position() == "epoch 2, step 6"
