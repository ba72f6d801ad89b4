"""experiments/gpu_check.sh measures a CUDA GPU; where torch sees none it stops at once."""

import contextlib
import os
import signal
import subprocess

from conftest import ROOT


def test_gpu_check_stops_at_once_with_one_sentence_where_torch_sees_no_cuda_gpu(tmp_path):
    out = tmp_path / "gpu"
    env = dict(os.environ, OUT=str(out), CUDA_VISIBLE_DEVICES="")  # hides a GPU this machine has
    process = subprocess.Popen(
        ["bash", str(ROOT / "experiments" / "gpu_check.sh")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so that everything it started can be ended
    )
    try:  # it used to go on to benchmark vit_l_16 on the CPU for hours
        stdout, stderr = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1
    assert stdout == "" and not out.exists()  # no log, no benchmark started
    assert stderr.splitlines() == [
        "error: torch sees no CUDA GPU here, so there is nothing to measure; run this on a "
        "machine with one"
    ]
