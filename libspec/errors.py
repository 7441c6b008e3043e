"""The one exception type the library raises for bad input; tools turn it into exit status 1."""


class SpecError(Exception):
    """A problem a person can act on: names the file, the record or field, what was expected."""


def where(path, record=None, field=None) -> str:
    """Format a location such as `data/records-00000.msgpack.zst: record 12: field loss_mask`."""
    parts = [str(path)]
    if record is not None:
        parts.append(f"record {record}")
    if field is not None:
        parts.append(f"field {field}")
    return ": ".join(parts)
