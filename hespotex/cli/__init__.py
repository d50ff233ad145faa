"""The command line: argument parsing only, the top layer, the only one that may import every
other (lazily, so `hespotex --help` answers at once).
"""
