"""Training logs of one run directory: CSV files plus TensorBoard event files.

:class:`TrainingLog` writes, under its directory,

* ``train.csv`` and ``val.csv``: column ``step`` then one column per logged key, in the order the keys
  first appeared; floats written with ``repr`` (they read back bit-exactly), ``None`` as an empty cell.
  Every row is flushed when written, so a killed run keeps its log.
* ``events/``: TensorBoard event files (tags ``train/<key>`` and ``val/<key>``), written with
  tensorboardX's protocol buffers and record writer; no TensorFlow or TensorBoard needed to write them.
  Written synchronously, one record per logged row, flushed at once (tensorboardX's ``SummaryWriter``
  queues events for a background thread, and its ``flush()`` does not wait for that queue).

Resuming (``resume_step=S``, the step of the checkpoint the run restarts from) drops the rows with
``step > S`` from both CSV files (a killed run may have logged past its last checkpoint) by rewriting
them atomically, and starts a new event file with a TensorBoard "purge" marker at step ``S + 1`` (a
``SessionLog.START`` event, what ``SummaryWriter(purge_step=S + 1)`` writes), so TensorBoard hides the
stale events at steps ``>= S + 1`` from earlier files. A fresh run (``resume_step=None``) starts both
CSV files empty, replacing those of an earlier run in the same directory, and, when earlier event files
are there, marks a purge from step 0.

:func:`read_csv` reads a CSV log back (tests, learning-curve plots).
"""

from __future__ import annotations

import csv
import io
import operator
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary

from adeblur.errors import AdeblurError

__all__ = ["TrainingLog", "read_csv"]

STEP_COLUMN = "step"


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows (as text) of the CSV log ``path``; an unfinished last line is left out.

    An empty file has no header and no rows. Raises :class:`AdeblurError` when ``path`` cannot be read
    or is not a training log (first column not ``step``, a step that is not an integer).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AdeblurError(f"cannot read training log {path}: {error}") from error
    # A run killed while writing a row can leave half a line; rows are always written whole, ending in \n.
    text = text[: text.rfind("\n") + 1]
    table = list(csv.reader(io.StringIO(text, newline="")))
    if not table:
        return [], []
    header, rows = table[0], table[1:]
    if not header or header[0] != STEP_COLUMN:
        raise AdeblurError(f"{path} is not a training log: its first column is not {STEP_COLUMN!r}")
    for line_number, row in enumerate(rows, start=2):
        if len(row) > len(header):
            raise AdeblurError(f"{path} line {line_number}: {len(row)} cells under {len(header)} columns")
        try:
            int(row[0])
        except (ValueError, IndexError):
            raise AdeblurError(f"{path} line {line_number}: step {row[:1]} is not an integer") from None
    return header, rows


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, float | None]]:
    """The rows of a CSV training log, oldest first, as ``{"step": int, key: float or None, ...}``.

    Every row has every column of the header; an empty cell reads as ``None``. Raises
    :class:`~adeblur.errors.AdeblurError` when the file cannot be read or is not a training log.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with TrainingLog(run, tensorboard=False) as log:
    ...         log.log_val(100, {"psnr": 30.5, "psnr_w": None})
    ...     read_csv(pathlib.Path(run) / "val.csv")
    [{'step': 100, 'psnr': 30.5, 'psnr_w': None}]
    """
    path = Path(path)
    header, rows = _read_table(path)
    records: list[dict[str, float | None]] = []
    for line_number, row in enumerate(rows, start=2):
        record: dict[str, float | None] = {STEP_COLUMN: int(row[0])}
        for key, cell in zip(header[1:], row[1:] + [""] * (len(header) - len(row))):
            try:
                record[key] = float(cell) if cell else None
            except ValueError:
                raise AdeblurError(f"{path} line {line_number}: {key} = {cell!r} is not a number") from None
        records.append(record)
    return records


def _write_table_atomically(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Replace ``path`` by a CSV file of ``header`` (if not empty) and ``rows``, via a temporary file and
    :func:`os.replace`, so a reader (or a crash) never sees half of it."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            if header:
                writer.writerow(header)
            writer.writerows(rows)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _format_value(key: str, value: object) -> str:
    """CSV cell of one logged value: ``repr`` of the float (round-trips exactly), empty for ``None``."""
    if value is None:
        return ""
    try:
        return repr(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"logged value {key!r} is not a number: {value!r}") from None


class _CsvLog:
    """One append-only CSV log whose header widens when a row brings a new key."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.columns: list[str] = []  # the keys, without "step"
        if resume_step is not None and path.exists():
            header, rows = _read_table(path)
            kept = [row for row in rows if int(row[0]) <= resume_step]
            # Rewrite also when only an unfinished last line was dropped: appending must start on a new line.
            if kept != rows or path.read_bytes()[-1:] not in (b"", b"\n"):
                _write_table_atomically(path, header, kept)
            self.columns = header[1:]
            self._file = path.open("a", encoding="utf-8", newline="")
        else:
            self._file = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")

    def append(self, step: int, scalars: Mapping[str, object]) -> None:
        cells = {key: _format_value(key, value) for key, value in scalars.items()}  # may raise: before writing
        new_keys = [key for key in cells if key not in self.columns]
        if new_keys:
            self._widen(new_keys)
        self._writer.writerow([str(step)] + [cells.get(key, "") for key in self.columns])
        self._file.flush()

    def _widen(self, new_keys: list[str]) -> None:
        """Add columns; rewrite the file with the wider header unless nothing was written yet."""
        self._file.flush()
        header, rows = _read_table(self.path)
        self.columns += new_keys
        if not header and not rows:
            self._writer.writerow([STEP_COLUMN, *self.columns])
            return
        self._file.close()
        padding = [""] * len(new_keys)
        _write_table_atomically(self.path, [STEP_COLUMN, *self.columns], [row + padding for row in rows])
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _check_scalars(scalars: Mapping[str, object]) -> None:
    for key in scalars:
        if not isinstance(key, str) or not key:
            raise TypeError(f"logged keys must be non-empty strings, got {key!r}")
        if key == STEP_COLUMN:
            raise ValueError(f"{STEP_COLUMN!r} is the step column; it cannot be a logged key")


class TrainingLog:
    """CSV logs plus TensorBoard-compatible event files of one run directory.

    Files: ``directory/train.csv``, ``directory/val.csv`` and ``directory/events/`` (see the module
    docstring for their format and for what ``resume_step`` does). The library never prints: this
    only writes files.

    Args:
        directory: the run directory; created if missing.
        resume_step: ``None`` for a fresh run; for a resumed run, the step of the checkpoint it restarts
            from: rows with ``step > resume_step`` are dropped from both CSV files, and TensorBoard is told
            to discard events from ``resume_step + 1`` on in the earlier event files.
        tensorboard: whether to write event files.

    Every CSV row and event record is flushed to the operating system as it is written (the event file
    is also synced to the disk then), so a killed run keeps its log; :meth:`flush` syncs the CSV files.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as run:
    ...     with TrainingLog(run) as log:
    ...         log.log_train(1, {"loss": 0.5, "lr": 1e-3})
    ...         log.log_train(2, {"loss": 0.25, "lr": 1e-3})
    ...     with TrainingLog(run, resume_step=1) as log:  # killed after step 2, resumed from step 1
    ...         log.log_train(2, {"loss": 0.3, "lr": 1e-3})
    ...     print(pathlib.Path(run, "train.csv").read_text(), end="")
    step,loss,lr
    1,0.5,0.001
    2,0.3,0.001
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, resume_step: int | None = None, tensorboard: bool = True
    ) -> None:
        if resume_step is not None:
            resume_step = operator.index(resume_step)
            if resume_step < 0:
                raise ValueError(f"resume_step must be >= 0, got {resume_step}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._closed = False
        self._train = _CsvLog(self.directory / "train.csv", resume_step)
        self._val = _CsvLog(self.directory / "val.csv", resume_step)
        self._events: EventsWriter | None = None
        if tensorboard:
            events_directory = self.directory / "events"
            events_directory.mkdir(exist_ok=True)
            earlier_files = sum("tfevents" in path.name for path in events_directory.iterdir())
            # Event file names carry the time in seconds; the file's index keeps two writers that start
            # within the same second from writing to the same file.
            self._events = EventsWriter(str(events_directory / "events"), filename_suffix=f".{earlier_files}")
            if earlier_files:
                purge_step = 0 if resume_step is None else resume_step + 1
                start = SessionLog(status=SessionLog.START)
                self._events.write_event(Event(step=purge_step, wall_time=time.time(), session_log=start))

    def log_train(self, step: int, scalars: Mapping[str, float | None]) -> None:
        """Append one row to ``train.csv`` and write the values as TensorBoard tags ``train/<key>``.

        A key never logged before widens the CSV header (the file is rewritten; earlier rows get empty
        cells). ``None`` values give empty cells and no event.
        """
        self._log(self._train, "train", step, scalars)

    def log_val(self, step: int, scalars: Mapping[str, float | None]) -> None:
        """Append one row to ``val.csv`` and write the values as TensorBoard tags ``val/<key>``.

        ``None`` (e.g. a weighted metric on data without masks) gives an empty cell and no event.
        """
        self._log(self._val, "val", step, scalars)

    def _log(self, table: _CsvLog, prefix: str, step: int, scalars: Mapping[str, float | None]) -> None:
        if self._closed:
            raise ValueError(f"TrainingLog of {self.directory} is closed")
        step = operator.index(step)
        _check_scalars(scalars)
        table.append(step, scalars)
        if self._events is not None:
            values = [
                Summary.Value(tag=f"{prefix}/{key}", simple_value=float(value))
                for key, value in scalars.items()
                if value is not None
            ]
            if values:
                self._events.write_event(Event(step=step, wall_time=time.time(), summary=Summary(value=values)))
                self._events.flush()

    def flush(self) -> None:
        """Write everything logged so far to the disk (CSV files and event file)."""
        if self._closed:
            return
        self._train.flush()
        self._val.flush()
        if self._events is not None:
            self._events.flush()

    def close(self) -> None:
        """Flush and close the files. Closing twice is allowed; logging after closing is not."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._train.close()
        self._val.close()
        if self._events is not None:
            self._events.close()

    def __enter__(self) -> TrainingLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
