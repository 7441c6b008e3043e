"""The on-disk format of SPEC.md: records, tensor shards, data sets, streams, checkpoints, atomic writes."""
