"""spec-push's stage: the model card and the Hub-ready folder or upload."""
