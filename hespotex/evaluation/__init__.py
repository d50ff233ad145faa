"""Judging a model: held-out evaluation, cross-validation, the ridge probe it must beat, and
the bulk RNA-seq check of predicted pseudo-bulk.

Imports every layer below it, ``hespotex.training`` included (cross-validation fits models).
"""
