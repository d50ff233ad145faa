"""The engine: a shard of slides through the stages in one process (what a rerun redoes, how a
slide fails alone), the shard plan the workflow's jobs follow, and the checks before a run.

Imports every layer below it (root, io, encoder, network, stages, outputs), never training.
"""

# Every log line the command line writes: to stderr, and to the per-slide stage logs of a job.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
