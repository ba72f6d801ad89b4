"""The shape of the code: each script holds its lesson, neighbours differ by one line, modules stay
plain, import each other without a cycle and change no global state, and ruff passes. Checked on
the syntax tree, so formatting cannot break them."""

import ast
import difflib
import re
import shutil
import subprocess
import sys

import pytest
from conftest import COPY_THIS, ROOT, SCRIPTS

FABRIC_CHAIN = [
    "01_fabric_baseline.py",
    "02_fabric_16mixed.py",
    "03_fabric_16true.py",
    "04_fabric_bf16true.py",
    "05_fabric_bf16mixed.py",
]
LETTERED = {  # lettered fix: (its parent, the statements it changes or adds)
    "03b_fabric_16true_adam_eps.py": "03_fabric_16true.py",
    "04b_fabric_bf16true_kahan.py": "04_fabric_bf16true.py",
    "04c_fabric_bf16true_compile.py": "04_fabric_bf16true.py",
    "04d_fabric_bf16true_fp8.py": "04_fabric_bf16true.py",
}
ENTRY_POINTS = ("benchmark.py", "predict.py")  # programs of their own, beside the scripts
# every module: what a script imports (COPY_THIS), and those of 04d (float8_training)
MODULES = sorted(
    path.name
    for path in ROOT.glob("*.py")
    if not path.name[0].isdigit() and path.name not in ENTRY_POINTS
)


def statements(before, after):
    """The statements (canonical source, comments dropped) removed from and added to a script."""
    removed, added = [], []
    old, new = (canonical_lines(ROOT / name) for name in (before, after))
    for line in difflib.ndiff(old, new):
        if line.startswith("- "):
            removed.append(line[2:].strip())
        elif line.startswith("+ "):
            added.append(line[2:].strip())
    return removed, added


def canonical_lines(path):
    """The module as ast.unparse writes it: one statement per line, whatever the formatting."""
    return ast.unparse(ast.parse(path.read_text())).splitlines()


def test_every_numbered_script_is_the_baseline_in_the_chain_or_a_lettered_fix():
    names = [script.name for script in SCRIPTS]
    assert names[0] == "00_pytorch_baseline.py"
    assert [name for name in names if name in FABRIC_CHAIN] == FABRIC_CHAIN
    assert set(names) <= {"00_pytorch_baseline.py", *FABRIC_CHAIN, *LETTERED}


@pytest.mark.parametrize("before, after", list(zip(FABRIC_CHAIN, FABRIC_CHAIN[1:], strict=False)))
def test_fabric_neighbours_differ_by_the_precision_line_only(before, after):
    removed, added = statements(before, after)
    assert len(removed) == len(added) == 1
    assert removed[0].startswith("PRECISION = ") and added[0].startswith("PRECISION = ")
    old, new = ((ROOT / name).read_text().splitlines() for name in (before, after))
    changed = [line for line in difflib.ndiff(old, new) if line[:2] in ("- ", "+ ")]
    assert len(changed) == 2  # the line itself, its comment included, and nothing else


def test_16true_fix_changes_only_adams_eps():
    removed, added = statements("03_fabric_16true.py", "03b_fabric_16true_adam_eps.py")
    assert removed == ["optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)"]
    assert added == [
        "optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate, eps=0.0001)"
    ]


def test_kahan_branch_changes_only_the_adam_it_imports_and_builds():
    removed, added = statements("04_fabric_bf16true.py", "04b_fabric_bf16true_kahan.py")
    assert removed == ["optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)"]
    kahan_adam = "Adam(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-08)"
    assert added == ["from optimi import Adam", f"optimizer = {kahan_adam}"]


def test_compile_branch_adds_one_line_that_compiles_the_model_before_fabric_setup():
    script = "04c_fabric_bf16true_compile.py"
    if not (ROOT / script).exists():
        pytest.skip("04c is not in this checkout")
    removed, added = statements("04_fabric_bf16true.py", script)
    assert (removed, added) == ([], ["model = torch.compile(model)"])
    lines = [line.strip() for line in canonical_lines(ROOT / script)]
    assert lines.index(added[0]) < lines.index("model, optimizer = fabric.setup(model, optimizer)")


def test_float8_branch_adds_torchaos_conversion_before_the_optimizer_and_fabric_setup():
    removed, added = statements("04_fabric_bf16true.py", "04d_fabric_bf16true_fp8.py")
    imported = "from float8_training import convert_to_float8_training, float8_filter"
    convert = "convert_to_float8_training(model, module_filter_fn=float8_filter(model, "
    assert removed == [] and added == [imported, convert + "fabric.device))"]
    lines = [line.strip() for line in canonical_lines(ROOT / "04d_fabric_bf16true_fp8.py")]
    assert lines.index(added[1]) < lines.index("model, optimizer = fabric.setup(model, optimizer)")
    assert lines.index(added[1]) < next(i for i, line in enumerate(lines) if "Adam(" in line)


def test_readme_shows_the_real_diffs():
    blocks = re.findall(
        r"```diff\n\$ diff (\S+) (\S+)\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL
    )
    assert len(blocks) >= 2
    for before, after, shown in blocks:
        real = subprocess.run(["diff", before, after], cwd=ROOT, capture_output=True, text=True)
        assert shown == real.stdout, after


CONVERSION = re.compile(
    r"fabric|Fabric|device|accelerator|backward|set_epoch|^ +\)$|"
    r"^ +(devices|strategy|num_nodes|precision)=|^#|^import lightning|^ +train_loader, val_loader"
)


def test_pytorch_to_fabric_diff_is_only_the_fabric_conversion():
    """00 -> 01: Fabric replaces picking the device, moving batches, set_epoch, backward and
    printing, and waits for every process at the end; nothing else changes."""
    before = (ROOT / "00_pytorch_baseline.py").read_text().splitlines()
    after = (ROOT / "01_fabric_baseline.py").read_text().splitlines()
    unexplained = []
    matcher = difflib.SequenceMatcher(None, before, after, autojunk=False)
    for kind, i1, i2, j1, j2 in matcher.get_opcodes():
        old, new = before[i1:i2], after[j1:j2]
        if kind == "replace" and len(old) == len(new):  # changed in place: either side may say why
            for a, b in zip(old, new, strict=True):
                explained = CONVERSION.search(a) or CONVERSION.search(b)
                if not explained and a.replace("print(", "fabric.print(", 1) != b:
                    unexplained.append((a, b))
        elif kind != "equal":
            unexplained += [line for line in old + new if not CONVERSION.search(line)]
    assert unexplained == []
    removed, added = statements("00_pytorch_baseline.py", "01_fabric_baseline.py")
    assert "loss.backward()" in removed and "fabric.backward(loss)" in added
    assert "with torch.device(device):" in removed and "with fabric.init_module():" in added
    prints = [line for line in removed + added if re.match(r"(fabric\.)?print\(", line)]
    assert len(prints) == 8  # progress, epoch, Ctrl-C and divergence lines: print -> fabric.print


LESSON = [  # in the order a reader meets them; canonical source, so formatting does not matter
    r"def train\(num_epochs, model, optimizer, scheduler, train_loader, val_loader, timer, ",
    r"for epoch in range\(num_epochs\):",
    r"logits = model\(features\)",
    r"loss = F\.cross_entropy\(logits, targets\)",
    r"if not all_finite\(loss\):\n +return ",
    r"optimizer\.zero_grad\(set_to_none=True\)",
    r"(fabric\.backward\(loss\)|loss\.backward\(\))",
    r"optimizer\.step\(\)",
    r"train_accuracy\.update\(logits\.argmax\(dim=1\), targets\)",
    r"timer\.step_done\(\)",
    r"scheduler\.step\(\)",
    r"compute_accuracy\(model, val_loader\)",
    r"def main\(args\):",
    r"L\.seed_everything\(args\.seed",
    r"print_setup\(PRECISION, ",
    r"train_loader, val_loader, test_loader, data = get_dataloaders\(args\.data, args\.model, ",
    r"weights = model_weights\(args\.model, args\.weights, args\.data_dir\)",
    r"measurement = Measurement\(PRECISION, ",
    r"model = get_model\(args\.model, weights=weights\)",
    r"model\.heads\.head = torch\.nn\.Linear\(model\.heads\.head\.in_features, data\.num_classes\)",
    r"optimizer = (torch\.optim\.)?Adam\(model\.parameters\(\), lr=args\.learning_rate",
    r"scheduler = torch\.optim\.lr_scheduler\.ExponentialLR\(optimizer, gamma=0\.9\)",
    r"measurement\.watch\(model, args\.track_updates\)",
    r"start = time\.perf_counter\(\)",
    r"accuracies, diverged_at = train\(num_epochs=args\.epochs, model=model,",
    r"except KeyboardInterrupt:",
    r"return 130",
    r"train_time = time\.perf_counter\(\) - start",
    r"accuracy_and_classes\(model, test_loader\)",
    r"measurement\.report\(train_time, accuracies, diverged_at, results=args\.results\)",
    r"return DIVERGED_EXIT_CODE",
    r"if __name__ == '__main__':",
    r"signal\.signal\(signal\.SIGTERM, signal\.default_int_handler\)",
    r"sys\.exit\(main\(parse_args\(\)\)\)",
    r"except InputError as error:\n +print_once\(f'error: {error}', file=sys\.stderr\)\n +"
    r"sys\.exit\(2\)",
    r"except \(PrecisionUnavailable, UnreadableImage\) as error:",
    r"sys\.exit\(1\)",
    r"except KeyboardInterrupt as interrupt:",
    r"sys\.exit\(130\)",
]
FABRIC_LESSON = [
    r"fabric = L\.Fabric\(accelerator=args\.accelerator, devices=args\.devices, "
    r"strategy=args\.strategy, num_nodes=args\.num_nodes, precision=PRECISION\)",
    r"fabric\.launch\(\)",
    r"with fabric\.init_module\(\):",
    r"model, optimizer = fabric\.setup\(model, optimizer\)",
    r"fabric\.setup_dataloaders\(train_loader, val_loader, test_loader\)",
    r"fabric\.barrier\(\)",
]


@pytest.mark.parametrize("script", [script.name for script in SCRIPTS])
def test_script_itself_shows_model_optimizer_loop_and_report_in_reading_order(script):
    text = "\n".join(canonical_lines(ROOT / script))
    positions = [re.search(pattern, text) for pattern in LESSON]
    assert [pattern for pattern, found in zip(LESSON, positions, strict=True) if not found] == []
    assert [found.start() for found in positions] == sorted(found.start() for found in positions)
    if script != "00_pytorch_baseline.py":
        assert [pattern for pattern in FABRIC_LESSON if not re.search(pattern, text)] == []


PLAIN_CODE = [*MODULES, "benchmark.py", "predict.py", *(script.name for script in SCRIPTS)]


@pytest.mark.parametrize("name", PLAIN_CODE)
def test_code_is_plain_no_named_lambdas_nested_conditionals_or_chained_inequalities(name):
    tree = ast.parse((ROOT / name).read_text())
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Lambda):
            problems.append(f"line {node.lineno}: a named lambda")
        if isinstance(node, ast.IfExp) and any(
            isinstance(child, ast.IfExp) for child in ast.walk(node) if child is not node
        ):
            problems.append(f"line {node.lineno}: a nested conditional expression")
        if isinstance(node, ast.Compare) and len(node.ops) > 1:
            problems.append(f"line {node.lineno}: a chained comparison")
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.BoolOp):
            problems.append(f"line {node.lineno}: a statement written as `x and f()`")
    assert problems == []


IMPORT_EVERY_MODULE = """
import importlib, sys, torchvision, warnings
import lightning, torchmetrics, torchao  # which set warnings filters of their own on import
for name in sys.argv[1:]:
    hook, models, filters = sys.excepthook, torchvision.models.list_models(), warnings.filters[:]
    importlib.import_module(name)
    assert sys.excepthook is hook, name + " replaced sys.excepthook"
    assert torchvision.models.list_models() == models, name + " registered a model"
    assert warnings.filters == filters, name + " changed the warnings filters"
"""


def test_importing_a_module_changes_no_global_hook_filter_or_registry():
    names = [name.removesuffix(".py") for name in MODULES]
    command = [sys.executable, "-c", IMPORT_EVERY_MODULE, *names]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_passes_with_the_repositorys_config(command):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -r requirements-dev.txt")
    result = subprocess.run([ruff, *command], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_lists_the_files_to_copy_and_they_run_alone_on_an_image_folder(odd_folder_run):
    section = (ROOT / "README.md").read_text().split("## Copy this into your project")[1]
    section = section.split("\n## ")[0]
    listed = next(paragraph for paragraph in section.split("\n\n") if paragraph.startswith("`"))
    assert re.findall(r"`([\w.]+\.py)`", listed) == COPY_THIS
    returncode, _, stderr, records = odd_folder_run["run"]  # run from a folder holding only these
    assert returncode == 0, stderr
    assert records[-1]["test_acc"] == 1.0
    copied = {path.name for path in odd_folder_run["project"].iterdir() if path.suffix == ".py"}
    assert copied == set(COPY_THIS)


def local_imports(name):
    """The names of this repository's modules that a module or script imports, anywhere in it."""
    local = {path.stem for path in ROOT.glob("*.py")}
    imported = set()
    for node in ast.walk(ast.parse((ROOT / name).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module)
    return imported & local


def test_modules_import_only_modules_and_without_a_cycle():
    """A module imports no script and not the runner; following the imports never comes back."""
    graph = {name.removesuffix(".py"): local_imports(name) for name in MODULES}
    assert {name: found - set(graph) for name, found in graph.items() if found - set(graph)} == {}
    done = set()
    while len(done) < len(graph):  # take a module whose imports are all taken: none left is a cycle
        ready = [name for name, found in graph.items() if name not in done and found <= done]
        assert ready, f"an import cycle among {sorted(set(graph) - done)}"
        done |= set(ready)


@pytest.mark.parametrize("name", MODULES)
def test_modules_raise_and_leave_exiting_hooks_and_args_to_the_scripts(name):
    """Only the scripts exit, install handlers or read the parsed flags; flags.py makes them."""
    problems = []
    for node in ast.walk(ast.parse((ROOT / name).read_text())):
        text = ast.unparse(node)
        if isinstance(node, ast.Call) and text.startswith(("sys.exit(", "signal.signal(")):
            problems.append(f"line {node.lineno}: {text}")
        if isinstance(node, ast.Assign) and "sys.excepthook" in text.split("=")[0]:
            problems.append(f"line {node.lineno}: replaces sys.excepthook")
        takes_args = isinstance(node, ast.arg) and node.arg == "args"
        if takes_args and name != "flags.py":
            problems.append(f"line {node.lineno}: a parameter `args`")
    assert problems == []
