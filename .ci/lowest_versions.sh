#!/usr/bin/env bash
# The floors of requirements.txt, tested: a venv with the lowest version each `>=` line allows,
# in which every numbered script trains --quick for a few steps. Fails, naming the script and
# showing its output, if one does not finish.
#
# torch and torchvision are the ones installed here (only they lie on the CI machine's package
# mirror), linked into the venv with what they need and nothing else, so that no package beyond
# the lowest set (matplotlib, scipy: torchmetrics imports them when it finds them) is seen.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
python=$work/venv/bin/python
site=$("$python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
# not linked: the pinned ones, the venv's own setuptools, and fsspec (lightning 2.4: before 2026)
python3 .ci/link_installed.py "$site" torch torchvision --except numpy pillow setuptools fsspec \
    >"$work/linked.txt"
# name>=X becomes name==X; torch and torchvision stay the linked ones
sed -nE 's/^([A-Za-z0-9_.-]+)>=([^ ]+).*/\1==\2/p' requirements.txt |
    grep -vE '^(torch|torchvision)==' >"$work/lowest.txt"
"$python" -m pip install --quiet --quiet --disable-pip-version-check \
    -r "$work/lowest.txt" -c "$work/linked.txt"
echo "lowest versions: $(tr '\n' ' ' <"$work/lowest.txt")with $(grep -E '^torch(vision)?==' "$work/linked.txt" | tr '\n' ' ')"
export python work
train_a_few_steps() {  # one script, --quick, 3 steps; its output shown only if it fails
    local script=$1 expected=0 status=0 start=$SECONDS
    if [[ $script == 03_* ]]; then
        expected=3  # 03 diverges by design (float16 weights, Adam's eps): nan_check's exit status
    fi
    OMP_NUM_THREADS=1 "$python" "$script" --quick --max-steps 3 >"$work/$script.log" 2>&1 ||
        status=$?
    if [[ $status != "$expected" ]]; then
        echo "lowest versions: $script FAILED (exit $status, expected $expected); its output:"
        tail -n 40 "$work/$script.log"
        return 1
    fi
    echo "lowest versions: $script exit $status as expected, $((SECONDS - start)) s"
}
export -f train_a_few_steps
# two at a time, one thread each
printf '%s\n' [0-9][0-9]*_*.py | xargs -P 2 -I{} bash -c 'train_a_few_steps {}'
