"""flags.py, several machines: a launch that would wait forever is refused before it waits, and
one that will wait says first where, for whom, and what to start on the other machines."""

import pytest

from flags import parse_args

CLUSTER_VARIABLES = [
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "SLURM_NTASKS",
    "TORCHELASTIC_RUN_ID",
]


@pytest.fixture
def environment(monkeypatch):
    """This machine's environment without a cluster's variables; setenv adds them back."""
    for name in CLUSTER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def refusal(flags, capsys):
    """The last line that parse_args prints on stderr before exiting with status 2."""
    with pytest.raises(SystemExit, match="2"):
        parse_args(flags)
    captured = capsys.readouterr()
    assert captured.out == ""  # no waiting line before a refusal
    return captured.err.splitlines()[-1]


@pytest.mark.parametrize(
    "already_set, unset",
    [
        ({}, "MASTER_ADDR, MASTER_PORT, NODE_RANK"),
        ({"MASTER_ADDR": "10.0.0.5"}, "MASTER_PORT, NODE_RANK"),
    ],
)
def test_several_machines_without_an_address_and_index_are_refused_naming_what_is_unset(
    environment, capsys, already_set, unset
):
    for name, value in already_set.items():
        environment.setenv(name, value)
    assert refusal(["--quick", "--num-nodes", "2"], capsys).endswith(
        f"error: --num-nodes 2 needs {unset} set on every machine (the first machine's address, a "
        "free port on it, and this machine's index from 0), or torchrun or SLURM, which set them; "
        "see docs/scaling_out.md"
    )


@pytest.mark.parametrize(
    "node, port, problem",
    [
        (
            "2",
            "29500",
            "NODE_RANK=2 is no machine of --num-nodes 2: give each machine its index, "
            "0 to 1, with 0 on the machine at MASTER_ADDR",
        ),
        ("first", "29500", "NODE_RANK=first is no machine of --num-nodes 2"),
        ("1", "http", "MASTER_PORT=http is no port number: give a free port, 1 to 65535"),
        ("1", "70000", "MASTER_PORT=70000 is no port number"),
    ],
)
def test_a_node_index_no_machine_has_or_a_port_that_is_no_port_is_refused(
    environment, capsys, node, port, problem
):
    environment.setenv("MASTER_ADDR", "10.0.0.5")
    environment.setenv("MASTER_PORT", port)
    environment.setenv("NODE_RANK", node)
    assert problem in refusal(["--quick", "--num-nodes", "2"], capsys)


@pytest.mark.parametrize("node, others", [("0", "1 / 2"), ("2", "0 / 1")])
def test_the_launch_says_where_for_whom_and_what_to_start_before_it_waits(
    environment, capsys, node, others
):
    environment.setenv("MASTER_ADDR", "10.0.0.5")
    environment.setenv("MASTER_PORT", "29500")
    environment.setenv("NODE_RANK", node)
    parse_args(["--quick", "--num-nodes", "3", "--devices", "2"])
    assert capsys.readouterr().out == (
        f"Waiting at 10.0.0.5:29500 for 3 machines x 2 device(s) = 6 processes; this is node "
        f"{node}. On the other machine(s), start the same command with MASTER_ADDR=10.0.0.5 "
        f"MASTER_PORT=29500 NODE_RANK={others}\n"
    )


@pytest.mark.parametrize(
    "variable, value",
    [("SLURM_NTASKS", "4"), ("TORCHELASTIC_RUN_ID", "job"), ("LOCAL_RANK", "1")],
    ids=["SLURM", "torchrun", "a process the launcher started"],
)
def test_cluster_tools_and_started_processes_neither_need_the_variables_nor_repeat_the_line(
    environment, capsys, variable, value
):
    environment.setenv(variable, value)
    if variable == "LOCAL_RANK":  # the launching process has said it already
        for name, setting in (("MASTER_ADDR", "10.0.0.5"), ("MASTER_PORT", "29500")):
            environment.setenv(name, setting)
        environment.setenv("NODE_RANK", "1")
    assert parse_args(["--quick", "--num-nodes", "2"]).num_nodes == 2
    assert capsys.readouterr().out == ""


def test_one_machine_needs_no_cluster_variables(environment, capsys):
    assert parse_args(["--quick"]).num_nodes == 1
    assert capsys.readouterr() == ("", "")
