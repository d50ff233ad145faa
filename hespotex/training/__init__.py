"""Training and judging a model on paired ST + H&E sections: section loaders, genes, the
training loops, resume, early stopping, evaluation, cross-validation, the ridge probe, the bulk
RNA-seq check, the demo data and planted artefacts (quality control's ground truth).

Imports every layer below it (root, io, model, stages, outputs), never the CLI.
"""
