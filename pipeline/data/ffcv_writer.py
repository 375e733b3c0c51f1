"""FFCV's DatasetWriter with fixes for unattended runs.

Upstream's progress loop waits until every sample is counted; if a writer process dies (an exception,
the OOM killer) the count never arrives and the run hangs forever. Here the loop also watches the
processes and fails fast, and the progress bar names the file being written. An exception at any point
(SIGTERM, as `dst data` raises it) stops every started writer process and frees the shared memory.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
from multiprocessing import Process, Queue, Value
from queue import Empty

from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import DatasetWriter
from tqdm import tqdm

from pipeline.data.common import sigterm_deferred, stop_processes
from pipeline.storage import OUT_OF_SPACE_ERRNOS


def _worker(work_fn, *args) -> None:
    """FFCV's writer job; a full disk or quota ends it with the errno as its exit status, without the traceback that
    multiprocessing prints for an exception (the parent names the file instead, as a full disk elsewhere is named)."""
    try:
        work_fn(*args)
    except OSError as err:
        if err.errno not in OUT_OF_SPACE_ERRNOS:
            raise
        sys.exit(err.errno)


class BetonWriter(DatasetWriter):
    def __init__(self, fname, fields, num_workers: int, desc: str = "", **kw):
        super().__init__(fname, fields, num_workers=num_workers, **kw)
        self.desc = desc

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        # Same steps as DatasetWriter._write_common (ffcv 1.0.2), plus the liveness check, and the shared memory that
        # prepare() creates is released whatever happens after it (a SIGTERM can land while the queue is filled).
        self.num_samples = num_samples
        self.prepare()
        processes: list[Process] = []
        try:
            workqueue: Queue = Queue()
            for todo in queue_content:
                workqueue.put(todo)
            allocations_queue: Queue = Queue()
            for _ in range(self.num_workers):
                workqueue.put(None)
            done_number = Value(ctypes.c_uint64, 0)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            worker_args = (workqueue, self.metadata_sm, self.metadata_type, self.fields, allocator, done_number,
                           allocations_queue, *extra_worker_args)
            for _ in range(self.num_workers):
                processes.append(Process(target=_worker, args=(work_fn, *worker_args), daemon=True))
                with sigterm_deferred():  # the worker is in `processes` before a SIGTERM stops this
                    processes[-1].start()
            self._wait_for(processes, done_number, allocations_queue)
            for p in processes:
                p.join()
        finally:
            stop_processes(processes)
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    def _wait_for(self, processes: list[Process], done_number, allocations_queue: Queue) -> None:
        """Show progress until every sample is written, then finalise; fail fast if a writer process died."""
        with tqdm(total=self.num_samples, desc=self.desc, unit="img", mininterval=1.0) as progress:
            while progress.n < self.num_samples:
                progress.update(done_number.value - progress.n)
                self._check_alive(processes, "while writing")
                time.sleep(0.05)
        allocation_list, received = [], 0
        while received < len(processes):  # each process sends its allocations once its pages are on disk
            try:
                allocation_list.extend(allocations_queue.get(timeout=1.0))
                received += 1
            except Empty:
                pass  # still writing its last pages, or dead: checked next
            self._check_alive(processes, "while finishing")
        self.finalize(allocation_list)

    def _check_alive(self, processes: list[Process], when: str) -> None:
        for p in processes:
            if p.exitcode in OUT_OF_SPACE_ERRNOS:  # see _worker
                raise OSError(p.exitcode, os.strerror(p.exitcode), self.fname)
            if p.exitcode not in (None, 0):
                raise RuntimeError(f"an FFCV writer process died (exit code {p.exitcode}) {when} {self.fname}")
