"""The network and what runs it: image encoders and their identity, PyTorch and ONNX runners,
the patch-encoding loop, the two streams, spot graphs, spatial blocks and checkpoints.

Imports the root modules and ``hespotex.io``, never the stages, outputs, training or CLI.
"""
