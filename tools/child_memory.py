"""A child process's own peak resident memory, without its parent's.

Linux carries a process's peak RSS across exec, and a child created by fork or vfork starts from
its parent's memory: wait4 on a child started from a 500 MB test process reports at least 500 MB,
whatever the child itself used. So the command runs under a small launcher (a fresh `python -S`),
which forks it from its own few megabytes, waits for it and reports the grandchild's
wait4 figures through a pipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

_LAUNCHER = """
import os, sys
report = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(report)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as error:  # one line, as Popen would have raised it
        os.write(2, b"%s: %s\\n" % (sys.argv[2].encode(), error.strerror.encode()))
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
os.write(report, b"%d %d" % (usage.ru_maxrss, os.waitstatus_to_exitcode(status)))
"""


class MeasuredChild:
    """`subprocess.Popen(command, **popen_kwargs)` whose `wait` also gives the command's own peak RSS."""

    def __init__(self, command: Sequence[str], **popen_kwargs):
        read_end, write_end = os.pipe()
        try:
            self.process = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, str(write_end), *command], pass_fds=(write_end,), **popen_kwargs)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._report = read_end

    @property
    def stdout(self):
        return self.process.stdout

    def wait(self) -> tuple[int, int]:
        """(exit status, peak resident bytes) of the command; (the launcher's status, 0) if it could not run it."""
        launcher_status = self.process.wait()
        with os.fdopen(self._report, "rb") as report:
            fields = report.read().split()
        if len(fields) != 2:
            return launcher_status, 0
        peak_kib, status = (int(field) for field in fields)
        return status, peak_kib * 1024
