"""run_record.py: records appended one JSON line each, whole beside other runs, through links and
into folders it creates. (What a record holds: conftest.RECORD_SCHEMA, checked on every script's
record in test_scripts.py.)"""

import errno
import json
import math
import multiprocessing
import os
import re
import stat
import sys

import pytest
from conftest import RECORD_SCHEMA, parse_args, run_in_process

import benchmark
import run_record
from errors import InputError
from run_record import append_record

REAL_WRITE = os.write


def test_results_are_appended_one_json_line_per_run(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"script": "a"})
    append_record(path, {"script": "b"})
    assert path.read_text() == '{"script": "a"}\n{"script": "b"}\n'


def test_a_results_link_to_a_read_only_file_stays_a_link_and_the_file_keeps_its_mode(
    odd_folder_run,
):
    link, target = odd_folder_run["link"], odd_folder_run["target"]
    assert odd_folder_run["run"][0] == 0 and link.is_symlink() and link.resolve() == target
    assert stat.S_IMODE(target.stat().st_mode) == 0o444  # appended to, not replaced
    assert target.stat().st_ino == odd_folder_run["inode"]
    records = odd_folder_run["run"][3]
    assert [record["script"] for record in records] == ["an earlier run", "04_fabric_bf16true.py"]


def test_a_results_folder_that_does_not_exist_is_created_and_said(tmp_path, capsys):
    results = tmp_path / "new" / "deeper" / "results.jsonl"
    parse_args(["--quick", "--results", str(results)])  # accepted: the folder can be made
    assert not results.parent.exists()  # parsing the flags writes nothing
    append_record(results, {"script": "a"})
    assert results.read_text() == '{"script": "a"}\n'
    assert f"Creating the folder {results.parent} for --results" in capsys.readouterr().out


def append_fifty(path, writer):
    for index in range(50):
        append_record(
            path, {"writer": writer, "index": index, "padding": "x" * 10_000}
        )  # more than one write buffer


def test_concurrent_appends_keep_every_record_whole(tmp_path):
    path = tmp_path / "results.jsonl"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=append_fifty, args=(path, writer)) for writer in range(8)]
    for process in writers:
        process.start()
    for process in writers:
        process.join()
    records = [json.loads(line) for line in path.read_text().splitlines()]  # fails on a torn line
    assert len(records) == 400 and {(record["writer"], record["index"]) for record in records} == {
        (writer, index) for writer in range(8) for index in range(50)
    }
    assert list(tmp_path.iterdir()) == [path]  # no lock file left beside it


def test_the_runner_reads_only_fields_that_every_record_has():
    assert set(benchmark.RECORD_KEYS) | set(benchmark.SETTING_KEYS) <= set(RECORD_SCHEMA)


def short_write(descriptor, data):
    """os.write on a disk that fills up halfway through the record: it writes part, and says so."""
    return REAL_WRITE(descriptor, data[: len(data) // 2])


def part_then_full(descriptor, data):
    """A write that stores part of the record, then fails as a full disk does."""
    REAL_WRITE(descriptor, data[: len(data) // 2])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("write", [short_write, part_then_full], ids=["short write", "ENOSPC"])
def test_a_full_disk_leaves_the_file_as_it_was_and_hands_back_the_record(
    tmp_path, monkeypatch, write
):
    path = tmp_path / "results.jsonl"
    path.write_text('{"script": "an earlier run"}\n')
    monkeypatch.setattr(run_record.os, "write", write)
    with pytest.raises(InputError) as refused:
        append_record(path, {"script": "a", "test_acc": 0.5, "train_acc": math.nan})
    assert path.read_text() == '{"script": "an earlier run"}\n'  # no part of a record
    sentence, line = str(refused.value).split("\n")
    assert sentence == (
        f"could not append this run's record to --results {path} (No space left on device), so "
        "the file is as it was; the run's numbers are printed above and its record is the next "
        "line, to append to the file yourself once it can be written"
    )
    assert json.loads(line) == {"script": "a", "test_acc": 0.5, "train_acc": None}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full (Linux has it)")
def test_a_run_whose_record_meets_a_full_disk_prints_its_numbers_one_sentence_and_exits_2(
    monkeypatch, capsys
):
    """/dev/full: a device on which every write fails with ENOSPC, as on a full disk."""
    argv = ["01_fabric_baseline.py", "--quick", "--max-steps", "2", "--results", "/dev/full"]
    monkeypatch.setattr(sys, "argv", argv)
    assert run_in_process("01_fabric_baseline.py") == 2
    printed = capsys.readouterr()
    assert re.search(r"^Train acc\.: .* \| Test acc\.: [\d.]+%$", printed.out, re.MULTILINE)
    assert "Results appended" not in printed.out
    sentence, line = printed.err.splitlines()
    assert sentence.startswith(
        "error: could not append this run's record to --results /dev/full (No space left on "
        "device), so the file is as it was;"
    )
    assert json.loads(line)["script"] == "01_fabric_baseline.py"
