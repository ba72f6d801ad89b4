"""Does the per-step NaN check cost time? Runs scripts with and without it, alternating, and
compares their steady-state images/s.

Run: python experiments/nonfinite_check_overhead.py [--repeats 3] -- --quick
     python experiments/nonfinite_check_overhead.py -- --synthetic --model vit_b_16 --max-steps 15
"Without" replaces nan_check.all_finite (one isfinite, one sync per step) by a function that
returns True, before the script imports it.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WITHOUT_CHECK = """
import runpy, sys
import nan_check

def always_finite(*tensors):
    return True

nan_check.all_finite = always_finite
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def images_per_s(script: str, flags: list[str], check: bool, folder: str) -> float:
    """One run's steady-state images/s, with or without the NaN check."""
    results = Path(folder) / "results.jsonl"
    results.unlink(missing_ok=True)
    launcher = [sys.executable]
    if not check:
        launcher = [sys.executable, "-c", WITHOUT_CHECK]
    command = [*launcher, str(REPO / script), *flags, "--results", str(results)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    return json.loads(results.read_text())["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    scripts = ["01_fabric_baseline.py", "04_fabric_bf16true.py"]
    parser.add_argument("--scripts", nargs="+", default=scripts)
    parser.add_argument("--repeats", type=int, default=3)
    args, flags = parser.parse_known_args()
    flags = [flag for flag in flags if flag != "--"]
    speeds = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            for script in args.scripts:
                for check in (True, False):  # alternating: drift in speed hits both alike
                    speed = images_per_s(script, flags, check, folder)
                    speeds.setdefault((script, check), []).append(speed)
    print("| script | images/s with the check | images/s without | with / without (median) |")
    print("| --- | --- | --- | --- |")
    for script in args.scripts:
        with_check, without = speeds[(script, True)], speeds[(script, False)]
        ratio = statistics.median(with_check) / statistics.median(without)
        shown = [", ".join(f"{value:.1f}" for value in values) for values in (with_check, without)]
        print(f"| {script} | {shown[0]} | {shown[1]} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
