"""TensorBoard event files: every run's curves where PyTorch, TensorFlow, JAX and MXNet users already look,
``tensorboard --logdir runs``.

The records are TensorBoard's own (its ``Event`` protobufs, framed and CRC-checked by its
``RecordWriter``), written here from the calling thread. Not tensorboardX, and not TensorBoard's
``EventFileWriter``: importing tensorboardX imports PyTorch whenever it is installed, and the
``EventFileWriter`` reaches files through TensorFlow's ``gfile``, importing TensorFlow; either would load
a second framework into a run of another (after TensorFlow, PyTorch has hung). Writing in the caller's
thread also makes a failed write (disk full) an error of the step that caused it, not of a background
thread.

One horizontal axis for every curve: SGD steps taken. Per-step values sit at their step, each epoch's at
the step that ends it, so runs with the same batches (``reproduce``'s backends, ``compare``'s variants)
line up, and a run's per-step and per-epoch training loss share an axis. Scalars are TensorBoard's
``simple_value`` (float32), which every TensorBoard and its ``EventAccumulator`` read.

An event file is an append log, so it does not go through ``fileio.atomic_write``: TensorBoard's reader
stops at a record cut short. A resumed run appends a new file that starts with a ``SessionLog.START`` at
its first step, which makes TensorBoard drop what the interrupted attempt wrote from that step on.
"""
from __future__ import annotations

import functools
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Optional

from .errors import WriteError
from .fileio import cause, no_follow

PREFIX = "events.out.tfevents"
#: metrics.jsonl's per-epoch columns, each logged under ``epoch/<column>``.
EPOCH_FIELDS = ("train_loss", "train_acc", "test_loss", "test_acc", "examples_per_sec")
STEP_LOSS, STEP_LR = "step/train_loss", "step/learning_rate"
FLUSH_SECONDS = 5.0  # a TensorBoard that is watching sees the per-step loss this soon
_files = itertools.count()  # orders two files one process opens in the same second (a run, then its resume)


def epoch_tag(field: str) -> str:
    return f"epoch/{field}"


class EventLog:
    """One run directory's event file, opened at the first value written. ``resumed``: the first step
    written also tells TensorBoard to discard what an earlier attempt logged from that step on."""

    def __init__(self, run_dir, resumed: bool = False):
        # Imported here, not at the first step, so that the import's half second is not timed as training.
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._pb, self._summary, self._record_writer = event_pb2, summary_pb2, RecordWriter
        self.dir, self.resumed = Path(run_dir), resumed
        self.path: Optional[Path] = None
        self.last_step = 0
        self._file = self._records = None
        self._flushed = 0.0

    def log_step(self, step: int, loss: float, lr: float) -> None:
        self._write(step, {STEP_LOSS: loss, STEP_LR: lr})
        self.last_step = step
        if time.monotonic() - self._flushed > FLUSH_SECONDS:
            self.flush()

    def log_epoch(self, row: dict) -> None:
        """At the step that ended the epoch (the epoch's number when no step was logged)."""
        self._write(self.last_step or row["epoch"], {epoch_tag(k): row[k] for k in EPOCH_FIELDS if k in row})
        self.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._guard(self._file.flush)
            self._flushed = time.monotonic()

    def close(self) -> None:
        """Never raises: a write that failed has already been reported by the call that made it."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def _write(self, step: int, scalars: dict) -> None:
        if self._file is None:
            self._open(step)
        values = [self._summary.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in scalars.items()]
        event = self._pb.Event(wall_time=time.time(), step=step, summary=self._summary.Summary(value=values))
        self._guard(self._records.write, event.SerializeToString())

    def _open(self, step: int) -> None:
        event_pb2 = self._pb
        self.path = self.dir / f"{PREFIX}.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_files)}"
        self._file = self._guard(functools.partial(open, opener=no_follow), self.path, "ab")
        self._records = self._record_writer(self._file)
        first = [event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")]
        if self.resumed:
            first.append(event_pb2.Event(wall_time=time.time(), step=step,
                                         session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        for event in first:
            self._guard(self._records.write, event.SerializeToString())

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            path = self.path or self.dir
            raise WriteError(f"could not write {path}: {cause(e)}", path, e.errno) from None
