"""spec-convert: external draft checkpoints -> the spec-tools checkpoint format (SPEC.md §11).

One module per source format, each with `matches(source)`, `convert(source, verifier, options,
name)`, `NAME` and `SIGNATURE`; this dict is the registry, in detection order (the first format
whose signature matches wins). libspec/convert/pipeline.py runs a conversion end to end.
"""

from __future__ import annotations

from types import ModuleType

from libspec.convert import (
    nvidia_eagle3,
    safeailab_eagle,
    safeailab_eagle3,
    specforge_eagle3,
    speculators,
    speculators_legacy,
    zlab_dflash,
)

FORMATS: dict[str, ModuleType] = {
    speculators.NAME: speculators,
    speculators_legacy.NAME: speculators_legacy,
    zlab_dflash.NAME: zlab_dflash,
    nvidia_eagle3.NAME: nvidia_eagle3,
    specforge_eagle3.NAME: specforge_eagle3,
    safeailab_eagle3.NAME: safeailab_eagle3,
    safeailab_eagle.NAME: safeailab_eagle,
}

# Other names people use for the same layouts; "hass" also changes the default drafting depth.
ALIASES: dict[str, str] = {
    "spec-tools": speculators.NAME,
    "eagle3": safeailab_eagle3.NAME,
    "specforge": specforge_eagle3.NAME,
    "nvidia": nvidia_eagle3.NAME,
    "modelopt": nvidia_eagle3.NAME,
    "dflash": zlab_dflash.NAME,
    "eagle": safeailab_eagle.NAME,
    "eagle1": safeailab_eagle.NAME,
    "eagle2": safeailab_eagle.NAME,
    "hass": safeailab_eagle.NAME,
}
