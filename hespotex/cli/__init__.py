"""The command line and the checks a run passes before any job starts: the top layer, the
only one that may import every other (lazily, so `hespotex --help` answers at once).
"""
