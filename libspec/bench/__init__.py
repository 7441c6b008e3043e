"""spec-bench's stage: the decoding engine, measurements, report checks, plots, online mode and server."""
