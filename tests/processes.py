"""A CLI run as a child process that a test interrupts: wait until it has done something, then signal it."""
import time


def wait_until(proc, ready, what: str, timeout: float, poll: float = 0.1) -> None:
    """Poll `ready()` until it is true. Fails with the child's output if it exits first, and with "`what` after
    `timeout` s" if it never gets there (the child killed first, so no test leaves it running)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        if time.monotonic() >= deadline:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"{what} after {timeout} s")
        time.sleep(poll)


def stop(proc, signum, timeout: float) -> tuple:
    """Send `signum` (SIGINT as Ctrl-C, SIGTERM as `timeout`/`kill`/SLURM), wait for the child to exit and return
    its (stdout, stderr); a child still running after that, or after a failure on the way, is killed."""
    try:
        proc.send_signal(signum)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
