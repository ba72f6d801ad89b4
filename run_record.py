"""The results file: one JSON line per run, appended safely beside other runs."""

import errno
import json
import math
import os
from pathlib import Path

from errors import InputError
from processes import print_once


def append_record(path: Path, record: dict) -> None:
    """Append the record as one JSON line, NaN written as null, under a lock on the file itself.

    Concurrent runs keep every record whole. A last line left without its newline (a run killed
    while writing) is ended first, so the new record starts on a line of its own. The line goes
    in one write: when the disk is full (or any other OSError), the file is cut back to what it
    held, so it never keeps part of a record.

    Errors: InputError saying the record was not written, with the record on the next line of
    the message, so that nothing of the run is lost.
    """
    clean = {
        key: None if isinstance(value, float) and math.isnan(value) else value
        for key, value in record.items()
    }
    line = json.dumps(clean)
    try:
        if not path.parent.is_dir():
            print_once(f"Creating the folder {path.parent} for --results")
            path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as file:  # "a" follows a symbolic link and keeps the file's mode
            if hasattr(os, "lockf"):  # POSIX; Windows has no lockf, and appends there go unlocked
                os.lockf(file.fileno(), os.F_LOCK, 0)  # waits for another run's append
            end = file.seek(0, os.SEEK_END)
            data = (line + "\n").encode()
            if end > 0:
                file.seek(end - 1)
                if file.read(1) != b"\n":
                    data = b"\n" + data
            write_whole(file.fileno(), data, end)
    except OSError as error:
        reason = error.strerror or str(error)
        raise InputError(
            f"could not append this run's record to --results {path} ({reason}), so the file "
            "is as it was; the run's numbers are printed above and its record is the next "
            f"line, to append to the file yourself once it can be written\n{line}"
        ) from None


def write_whole(descriptor: int, data: bytes, end: int) -> None:
    """Write data at the end of the open file in one call; if that fails or writes only part of
    it (a full disk), cut the file back to `end` bytes and raise OSError."""
    try:
        written = os.write(descriptor, data)
        if written < len(data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a short write means
    except OSError:
        if os.fstat(descriptor).st_size > end:  # a device such as /dev/full has no size to cut
            os.ftruncate(descriptor, end)
        raise
