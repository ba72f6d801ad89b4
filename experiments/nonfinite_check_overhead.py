"""Does the per-step NaN check cost time? Run scripts with and without it, alternating, and compare images/s.

Run: python experiments/nonfinite_check_overhead.py [--repeats 3] -- --quick
     python experiments/nonfinite_check_overhead.py -- --synthetic --model vit_b_16 --batch-size 8 --max-steps 15
"Without" replaces local_utilities.all_finite (one isfinite, one sync per step) by a function that returns True.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WITHOUT_CHECK = (
    "import runpy, sys, local_utilities; local_utilities.all_finite = lambda *tensors: True; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)

parser = argparse.ArgumentParser()
parser.add_argument(
    "--scripts", nargs="+", default=["01_fabric_baseline.py", "04_fabric_bf16true.py"]
)
parser.add_argument("--repeats", type=int, default=3)
args, script_flags = parser.parse_known_args()
script_flags = [flag for flag in script_flags if flag != "--"]

with tempfile.TemporaryDirectory() as folder:
    speeds = {}
    for repeat in range(args.repeats):
        for script in args.scripts:
            for check in (
                True,
                False,
            ):  # alternating, so drift in the machine's speed hits both alike
                results = Path(folder) / "results.jsonl"
                results.unlink(missing_ok=True)
                launcher = [sys.executable] if check else [sys.executable, "-c", WITHOUT_CHECK]
                subprocess.run(
                    [*launcher, str(REPO / script), *script_flags, "--results", str(results)],
                    cwd=REPO,
                    check=True,
                    capture_output=True,
                )
                speeds.setdefault((script, check), []).append(
                    json.loads(results.read_text())["images_per_s"]
                )
    print("| script | images/s with the check | images/s without | with / without (median) |")
    print("| --- | --- | --- | --- |")
    for script in args.scripts:
        with_check, without = speeds[(script, True)], speeds[(script, False)]
        print(
            f"| {script} | {', '.join(f'{v:.1f}' for v in with_check)} | {', '.join(f'{v:.1f}' for v in without)} | "
            f"{statistics.median(with_check) / statistics.median(without):.3f} |"
        )
