"""EAGLE-1 / EAGLE-2 / HASS: checkpoint config and draft model."""
