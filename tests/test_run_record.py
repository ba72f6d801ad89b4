"""run_record.py: records appended one JSON line each, whole beside other runs, through links and
into folders it creates. (What a record holds: conftest.RECORD_SCHEMA, checked on every script's
record in test_scripts.py.)"""

import json
import multiprocessing
import stat

from conftest import RECORD_SCHEMA, parse_args

import benchmark
from run_record import append_record


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
