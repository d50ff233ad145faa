"""HESpotEx's network: the expression autoencoder and the image stream, the spot graph,
spatial blocks for training, and the checkpoint that carries them.

Imports the root modules, ``hespotex.io`` and ``hespotex.encoder`` (the checkpoint's encoder).
"""
