"""Files a folder names for itself (a shard index's weight_map, a manifest's shard list).

Every such name is resolved here, so that no tool ever reads, copies or publishes a file outside
the folder it was given: a checkpoint whose index names `/home/me/.cache/huggingface/token` or
`../other/.env` is refused, whatever else the user allowed (`--force` included).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from libspec.errors import SpecError
from libspec.format.json_files import read_shard_index


def inside(folder: str | Path, name: object, what: str) -> Path:
    """`folder / name` if it is a regular file inside `folder`; else a one-line SpecError starting with `what`.

    Refused: names that are not plain relative paths (absolute, with a `..` part, empty), symlinks
    that resolve outside the folder, and anything but a regular file. The links of a Hugging Face
    cache snapshot into its repository's blobs/ folder count as inside.
    """
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\0" in name:
        raise SpecError(f"{what}: {name!r} is not a file name")
    if PurePosixPath(name).is_absolute() or Path(name).is_absolute():
        raise SpecError(f"{what}: {name!r} is an absolute path; only files inside {folder} are read")
    if ".." in PurePosixPath(name).parts or ".." in Path(name).parts:
        raise SpecError(f"{what}: {name!r} leads out of the folder with '..'; only files inside {folder} are read")
    path = folder / name
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root) for root in _roots(folder)):
        raise SpecError(f"{what}: {name!r} is a link to {resolved}, outside {folder}; only files inside the folder are read")
    if not resolved.exists():
        raise SpecError(f"{what}: {name!r} does not exist in {folder}")
    if not resolved.is_file():
        raise SpecError(f"{what}: {name!r} is not a regular file")
    return path


def read_weight_map(folder: str | Path, index_name: str) -> dict[str, Path]:
    """Tensor name -> the shard holding it, from the shard index `folder/index_name` (model.safetensors.index.json);
    the index and every shard it names are checked with `inside`."""
    index = inside(folder, index_name, str(folder))
    weight_map = read_shard_index(index)
    checked: dict[str, Path] = {}  # many tensors share one shard: check each file name once
    shards = {}
    for tensor, name in weight_map.items():
        key = name if isinstance(name, str) else repr(name)
        if key not in checked:
            checked[key] = inside(folder, name, f"{index}: weight_map[{tensor!r}]")
        shards[tensor] = checked[key]
    return shards


def _roots(folder: Path) -> list[Path]:
    """Where the files of `folder` may live: the folder, and for a Hub cache snapshot its blobs/."""
    root = folder.resolve()
    roots = [root]
    if root.parent.name == "snapshots":  # <cache>/models--org--name/snapshots/<revision>/file -> ../../blobs/<sha>
        roots.append(root.parent.parent / "blobs")
    return roots
