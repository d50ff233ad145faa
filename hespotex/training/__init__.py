"""Training and judging a model on paired ST + H&E sections: section loaders, genes, the
training loops, resume and early stopping, evaluation, cross-validation, the ridge probe,
the bulk RNA-seq check and the demo data.

Imports every layer below it (root, io, model, stages, outputs), never the CLI.
"""
