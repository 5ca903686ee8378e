"""The load harness: `python -m benchmarks` (or `make bench`). See benchmarks/README.md.

Each measurement runs side by side with its reference in the same run:

- poll      relay polls/s against a bare httpx loop at the same concurrency (the ceiling)
- scale     10^4 / 10^5 tracked jobs: the relay against one APScheduler job per id (the naive design)
- latency   simulator's terminal answer → callback at the receiver
- api       POST /jobs/batch, POST /jobs, GET /jobs with 10^5 jobs in the database
"""
