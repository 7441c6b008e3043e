"""tools/child_memory.py: a child's peak RSS is its own, not its parent's."""

import sys

from tools.child_memory import MeasuredChild

MB = 1024 * 1024


def peak_of(code: str) -> tuple[int, int]:
    return MeasuredChild([sys.executable, "-S", "-c", code]).wait()


def test_a_large_parent_does_not_inflate_a_small_childs_peak():
    ballast = b"\x01" * (400 * MB)  # written, so every page counts in this process's RSS
    try:
        status, peak = peak_of("pass")
    finally:
        del ballast
    assert status == 0 and 0 < peak < 100 * MB, f"peak {peak / MB:.0f} MiB for an empty Python"


def test_a_childs_own_allocation_and_exit_status_are_reported():
    status, peak = peak_of("import sys; block = b'\\x01' * (300 * 1024 * 1024); sys.exit(3)")
    assert status == 3 and peak >= 300 * MB


def test_a_command_that_cannot_start_reports_failure():
    status, _ = MeasuredChild(["/nonexistent/command"]).wait()
    assert status != 0
