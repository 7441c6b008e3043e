"""spec-train's stage: the loop, its state, packing, the teacher, the vocabulary map, data parallelism."""
