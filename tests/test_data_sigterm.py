"""How `dst data` acts on SIGTERM, made deterministic: each case runs in a fresh interpreter that signals itself at
the moment under test (tests/test_faults_prepare.py sends the signal at a moment chosen by the scheduler).

- SIGTERM raised while a lock is held: seen as a `dst data imagenet` that never exited (about 1 run in 10), its main
  thread waiting at exit for the lock of a multiprocessing Queue that the signal had interrupted mid-`put`.
- sigterm_deferred: around the start of worker processes, the signal waits until the worker is known.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as under SLURM
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_sigterm_that_interrupts_a_held_lock_still_ends_the_command():
    # The queue's feeder thread is started (first put); the main thread then holds the queue's lock, as if the
    # signal had landed between its acquire and the `with` that releases it. Python's exit-time finaliser of the
    # queue takes that lock: without the exit that skips exit handlers, this process never ends.
    proc = _python("""
        import multiprocessing, os, signal, time
        from pipeline.commands.data import exit_cleanly_on_sigterm

        with exit_cleanly_on_sigterm():
            queue = multiprocessing.Queue()
            queue.put("work")
            queue._notempty.acquire()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        print("not reached")
    """, timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert "SIGTERM received: stopping; partial outputs are removed" in proc.stderr
    assert "not reached" not in proc.stdout and "Traceback" not in proc.stderr, proc.stderr


def test_clean_up_between_the_signal_and_the_exit_runs_and_its_output_is_flushed():
    proc = _python("""
        import os, signal, sys, time
        from pipeline.commands.data import exit_cleanly_on_sigterm

        with exit_cleanly_on_sigterm():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
            finally:
                sys.stdout.write("cleaned up")  # buffered (a pipe): lost unless flushed before the exit
    """)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stdout == "cleaned up"


def test_sigterm_in_a_deferred_block_is_handled_when_the_block_ends():
    proc = _python("""
        import os, signal, time
        from pipeline.commands.data import exit_cleanly_on_sigterm
        from pipeline.data.common import sigterm_deferred

        with exit_cleanly_on_sigterm():
            with sigterm_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)  # a handler that raised would have cut this short
                print("block completed", flush=True)
            time.sleep(30)
        print("not reached")
    """)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert proc.stdout == "block completed\n"


def test_a_process_forked_in_a_deferred_block_ends_on_sigterm():
    # The child must not inherit the deferral: a worker forked as the signal reaches the group would run on.
    proc = _python("""
        import os, signal, time
        from pipeline.commands.data import exit_cleanly_on_sigterm
        from pipeline.data.common import sigterm_deferred

        with exit_cleanly_on_sigterm():
            with sigterm_deferred():
                child = os.fork()
                if child == 0:
                    time.sleep(0.2)  # in the child: still inside the copied block when the signal comes
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(30)
                    os._exit(0)
            _, status = os.waitpid(child, 0)
            print(os.waitstatus_to_exitcode(status))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(-signal.SIGTERM)


def test_deferral_restores_the_previous_handler():
    from pipeline.data.common import sigterm_deferred

    before = signal.getsignal(signal.SIGTERM)
    with sigterm_deferred():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
