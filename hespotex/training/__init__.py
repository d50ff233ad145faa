"""Fitting a model on paired ST + H&E sections: section tensors, gene selection, the training
loops, resume and early stopping, and ``fit``/``train`` themselves.

Imports the root modules, ``hespotex.io``, ``hespotex.encoder`` and ``hespotex.network``.
"""
