"""libspec: the shared library behind the spec-* tools.

Stages meet only in the on-disk format described in SPEC.md; this package reads and writes it.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("spec-tools")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

FORMAT_VERSION = 1
