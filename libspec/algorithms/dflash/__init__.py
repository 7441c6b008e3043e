"""DFlash: checkpoint config and draft model."""
