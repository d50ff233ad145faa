"""The frozen image encoder: building and loading it (presets, local weights), its identity,
the PyTorch and ONNX runners, the read-and-encode loop, stain normalisation, nucleus counting.

Imports the root modules and ``hespotex.io``, never the network or anything above.
"""
