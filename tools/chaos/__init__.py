"""chaos: the fault campaign of issue 16, rerun whenever the code changes (`./just chaos`).

kill -9 at random moments then resume (spec-gen-hidden, spec-train), a full disk and a read-only
output folder (both tools), and bursts of concurrent good and bad requests against
`spec-bench serve`. A development tool, not part of the test run.
"""
