"""The command line and the checks a run passes before any job starts: the top layer, the
only one that may import every other (lazily, so `hespotex --help` answers at once).
"""

# Every log line the command line writes: to stderr, and to the per-slide stage logs of a job.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
