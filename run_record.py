"""The results file: one JSON line per run, appended safely beside other runs."""

import json
import math
import os
from pathlib import Path

from processes import print_once


def append_record(path: Path, record: dict) -> None:
    """Append the record as one JSON line, NaN written as null, under a lock on the file itself.

    Concurrent runs keep every record whole. A last line left without its newline (a run killed
    while writing) is ended first, so the new record starts on a line of its own.
    """
    if not path.parent.is_dir():
        print_once(f"Creating the folder {path.parent} for --results")
        path.parent.mkdir(parents=True, exist_ok=True)
    clean = {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in record.items()
    }
    with open(path, "a+b") as file:  # "a" follows a symbolic link and keeps the file's mode
        if hasattr(os, "lockf"):  # POSIX; Windows has no lockf, and appends there go unlocked
            os.lockf(file.fileno(), os.F_LOCK, 0)  # waits for another run's append
        end = file.seek(0, os.SEEK_END)
        if end > 0:
            file.seek(end - 1)
            if file.read(1) != b"\n":
                file.write(b"\n")
        file.write((json.dumps(clean) + "\n").encode())
