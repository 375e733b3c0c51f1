"""FFCV's DatasetWriter with fixes for unattended runs.

Upstream's progress loop waits until every sample is counted; if a writer process dies (an exception,
the OOM killer) the count never arrives and the run hangs forever. Here the loop also watches the
processes and fails fast, and the progress bar names the file being written. An exception at any point
(SIGTERM, as `dst data` raises it) stops every started writer process and frees the shared memory.
"""
from __future__ import annotations

import ctypes
import time
from multiprocessing import Process, Queue, Value
from queue import Empty

from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import DatasetWriter
from tqdm import tqdm

from pipeline.data.common import sigterm_deferred


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
                processes.append(Process(target=work_fn, args=worker_args, daemon=True))
                with sigterm_deferred():  # the worker is in `processes` before a SIGTERM stops this
                    processes[-1].start()
            self._wait_for(processes, done_number, allocations_queue)
            for p in processes:
                p.join()
        finally:
            for p in processes:
                if p.is_alive():
                    p.terminate()
                    # A worker that cannot act on SIGTERM (stopped, or stuck in the kernel) would make this join
                    # wait forever, and the interrupted run would never reach the clean-up of its temporary files.
                    p.join(5)
                    if p.is_alive():
                        p.kill()
                        p.join()
            self.metadata_sm.close()
            self.metadata_sm.unlink()

    def _wait_for(self, processes: list[Process], done_number, allocations_queue: Queue) -> None:
        """Show progress until every sample is written, then finalise; fail fast if a writer process died."""
        with tqdm(total=self.num_samples, desc=self.desc, unit="img", mininterval=1.0) as progress:
            while progress.n < self.num_samples:
                progress.update(done_number.value - progress.n)
                failed = [p for p in processes if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"an FFCV writer process died (exit code {failed[0].exitcode}) "
                                       f"while writing {self.fname}")
                time.sleep(0.05)
        allocation_list, received = [], 0
        while received < len(processes):  # each process sends its allocations once its pages are on disk
            try:
                allocation_list.extend(allocations_queue.get(timeout=1.0))
                received += 1
            except Empty:
                if any(p.exitcode not in (None, 0) for p in processes):
                    raise RuntimeError(f"an FFCV writer process died while finishing {self.fname}") from None
        self.finalize(allocation_list)
