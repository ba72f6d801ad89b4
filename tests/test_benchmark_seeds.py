"""benchmark.py over seeds: test accuracy's mean and spread, and the paired difference to 01 and
to a lettered script's parent with its 95% t interval, checked on numbers worked out by hand."""

import math
import sys

import pytest
from test_benchmark import record, table, tabulate

import benchmark

T_975_2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom (3 pairs)


def runs(script, accuracies, seeds=(1, 2, 3)):
    """One record per seed with the given test accuracies (fractions)."""
    return [record(script, seed=s, test_acc=a) for s, a in zip(seeds, accuracies, strict=True)]


def test_three_identical_differences_have_a_zero_width_interval():
    assert benchmark.verdict([1.0, 1.0, 1.0]) == (
        "higher by 1.00 points (95% interval +1.00 to +1.00)"
    )


def test_the_interval_is_the_t_interval_of_the_mean_difference():
    # differences 1, 2, 3 points: mean 2, standard deviation 1, half-width t * 1 / sqrt(3)
    half = T_975_2 * 1 / math.sqrt(3)
    assert half == pytest.approx(2.4841, abs=1e-4)
    low, high = f"{2 - half:+.2f}", f"{2 + half:+.2f}"
    assert benchmark.verdict([1.0, 2.0, 3.0]) == (
        f"within seed noise (+2.00 points, 95% interval {low} to {high})"
    )


@pytest.mark.parametrize(
    "differences, words",
    [
        ([-3.0, -4.0, -5.0], "lower by 4.00 points (95% interval -6.48 to -1.52)"),
        ([3.0, 4.0, 5.0], "higher by 4.00 points (95% interval +1.52 to +6.48)"),
        ([-1.0, 0.0, 1.0], "within seed noise (+0.00 points, 95% interval -2.48 to +2.48)"),
        ([0.0, 0.0, 0.0], "within seed noise (+0.00 points, 95% interval +0.00 to +0.00)"),
    ],
    ids=["lower", "higher", "noise", "identical runs"],
)
def test_a_verdict_in_words_for_each_case(differences, words):
    assert benchmark.verdict(differences) == words


def test_seed_table_has_mean_spread_and_the_difference_paired_by_seed(tmp_path, capsys):
    records = runs("01_fabric_baseline.py", [0.50, 0.60, 0.70])
    records += runs("04_fabric_bf16true.py", [0.51, 0.62, 0.73])  # +1, +2, +3 points
    records += runs(
        "04b_fabric_bf16true_kahan.py", [0.46, 0.56, 0.66]
    )  # -4 points against 01, -6 on average against 04
    code, rows, _, printed = tabulate(tmp_path, records, capsys)
    assert code == 0
    baseline, bf16, kahan = rows
    assert (baseline["Test acc. (%)"], baseline["SD over seeds (points)"]) == ("60.0", "10.00")
    assert baseline["Min–max over seeds (%)"] == "50.0–70.0"
    assert baseline["Vs 01, paired by seed"] == "–"
    assert bf16["Vs 01, paired by seed"].startswith("within seed noise (+2.00 points")
    assert kahan["Vs 01, paired by seed"] == ("lower by 4.00 points (95% interval -4.00 to -4.00)")
    assert kahan["Vs parent, paired by seed"].startswith("lower by 6.00 points")
    terminal = table(printed, 1)  # the accuracy table
    assert terminal[1]["Vs 01, paired by seed"] == bf16["Vs 01, paired by seed"]


def test_only_seeds_both_scripts_ran_are_paired(tmp_path):
    records = runs("01_fabric_baseline.py", [0.5, 0.6, 0.7])
    records += runs("04_fabric_bf16true.py", [0.62, 0.73], seeds=(2, 3))  # seeds 2 and 3: +2, +3
    rows = tabulate(tmp_path, records)[1]
    assert rows[1]["Vs 01, paired by seed"].startswith("within seed noise (+2.50 points")


def test_one_seed_gives_no_spread_and_no_paired_difference(tmp_path):
    rows = tabulate(tmp_path, [record("01_fabric_baseline.py"), record("04_fabric_bf16true.py")])[1]
    assert "SD over seeds (points)" not in rows[1] and "Vs 01, paired by seed" not in rows[1]


def test_without_scipy_the_table_has_the_mean_difference_and_one_sentence(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy now fails
    records = runs("01_fabric_baseline.py", [0.5, 0.6, 0.7])
    records += runs("04_fabric_bf16true.py", [0.51, 0.62, 0.73])
    _, rows, markdown, printed = tabulate(tmp_path, records, capsys)
    assert rows[1]["Vs 01, paired by seed"] == "+2.00 points over 3 seeds"
    assert printed.count("pip install scipy") == 1 and "pip install scipy" in markdown


def test_the_chart_draws_the_standard_deviation_over_seeds_as_error_bars():
    records = runs("01_fabric_baseline.py", [0.5, 0.6, 0.7])
    summary = benchmark.median_runs(records)
    accuracy = benchmark.chart_panels(summary, benchmark.ratios(summary))[2]
    assert accuracy[0] == "Test accuracy (%)"
    assert accuracy[1][0][0] == pytest.approx(60.0) and accuracy[1][0][2] == pytest.approx(10.0)
