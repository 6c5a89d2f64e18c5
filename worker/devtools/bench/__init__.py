"""`python -m worker.devtools.bench`: the persister against its ceilings and a naive baseline.

One run on one throwaway local stack (Kafka + PostgreSQL), every measurement
side by side on the same machine and the same events: reading the topic alone,
writing the rows alone with COPY, a Prefect-style persister, and the real
worker with one and two replicas, plus end-to-end latency and what each index
costs the write path.
"""
