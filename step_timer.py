"""The step timer: each training step's time, the part spent waiting for data, speed and time
left."""

import time

import torch

from processes import world_size


def synchronize(device: torch.device) -> None:
    """Wait until the accelerator has finished its queued work (a CPU's is done on return)."""
    if device.type in ("cuda", "mps"):
        getattr(torch, device.type).synchronize()


def speed(images_per_s: float, seconds_per_step: float) -> str:
    """Images/s with three significant digits or more; s/step beside it for steps of 1 s or more."""
    text = f"{images_per_s:#.3g} img/s"
    if images_per_s >= 10:
        text = f"{images_per_s:.1f} img/s"
    if seconds_per_step >= 1:
        text += f" ({seconds_per_step:.2f} s/step)"
    return text


def clock(seconds: float) -> str:
    """MM:SS, or H:MM:SS from an hour on; rounded to whole seconds first, so 59.6 s is 01:00."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class StepTimer:
    """The time of every training step, and the part of it spent waiting for the data loader.

    `batch_size` is per device. The steps after the `warmup_steps` make the steady state (all of
    them when a run has no more steps than the warm-up). Times are in seconds, taken after the
    accelerator has finished the step's work.
    """

    def __init__(
        self,
        device: torch.device,
        steps_per_epoch: int,
        epochs: int,
        batch_size: int,
        warmup_steps: int,
    ):
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.total_steps = steps_per_epoch * epochs
        self.warmup_steps = warmup_steps
        self.images_per_step = batch_size * world_size()  # over all processes
        self.step_times: list[float] = []
        self.data_waits: list[float] = []
        self.device = device
        self.last_end = 0.0  # perf_counter() seconds
        self.batch_arrived = 0.0
        self.last_progress = 0.0

    def start_epoch(self) -> None:
        """Start the clock at the top of an epoch, so that validation counts in no step."""
        self.last_end = time.perf_counter()

    def batch_ready(self) -> None:
        """The batch is here: the time since the last step ended went into waiting for it."""
        self.batch_arrived = time.perf_counter()

    def step_done(self) -> None:
        """Wait for the accelerator's queued work (a sync point), then record the step's time."""
        synchronize(self.device)
        now = time.perf_counter()
        self.add(step_time=now - self.last_end, data_wait=self.batch_arrived - self.last_end)
        self.last_end = now

    def add(self, step_time: float, data_wait: float) -> None:
        """Record one step: its time and the part of it spent waiting for data, in seconds."""
        self.step_times.append(step_time)
        self.data_waits.append(data_wait)

    @property
    def steady(self) -> slice:
        """The steps of the steady state, as a slice of step_times."""
        if self.total_steps <= self.warmup_steps:
            return slice(0, None)
        return slice(self.warmup_steps, None)

    @property
    def steady_steps(self) -> int:
        return len(self.step_times[self.steady])

    @property
    def steady_time(self) -> float:
        return sum(self.step_times[self.steady])

    @property
    def steady_data_wait(self) -> float:
        return sum(self.data_waits[self.steady])

    def seconds_since_progress(self) -> float:
        return time.perf_counter() - self.last_progress

    def progress(self) -> str:
        """'<speed> | MM:SS left', from the steady state so far, or the last step in warm-up."""
        self.last_progress = time.perf_counter()
        step_time = self.step_times[-1]
        if self.steady_steps:
            step_time = self.steady_time / self.steady_steps
        left = (self.total_steps - len(self.step_times)) * step_time
        return f"{speed(self.images_per_step / step_time, step_time)} | {clock(left)} left"

    def position(self) -> str:
        """'epoch E, step S': where training is, for a message."""
        done = len(self.step_times)
        epoch = min(done // self.steps_per_epoch + 1, self.epochs)
        return f"epoch {epoch}, step {done + 1}"
