"""The self-pipe that ends a thread sleeping in poll: one byte wakes it, then it is joined.

A thread that waits on file descriptors (inotify, fanotify, a listening socket, the
mount table) also polls the read end of a non-blocking pipe; `stop` writes to the write
end so the thread sees its stop flag now rather than at its next event.
"""

from __future__ import annotations

import os
import threading


def wake(wake_w: int) -> None:
    """One byte to the pipe's write end. A full pipe means the thread is awake anyway,
    and a closed one that it has ended: neither is an error."""
    try:
        os.write(wake_w, b"x")
    except OSError:
        pass


def wake_then_join(thread: threading.Thread, wake_w: int) -> None:
    """Wake `thread` through its pipe's write end and wait for it to end."""
    wake(wake_w)
    thread.join()


def close_pipe(wake_r: int, wake_w: int) -> None:
    """Close both ends, once the thread that polled the read end has ended."""
    for fd in (wake_r, wake_w):
        os.close(fd)
