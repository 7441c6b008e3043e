"""EAGLE-3: checkpoint config, draft model, training objective."""
