"""Every on-disk format and reader: slide readers and their factory, the reading pool, patch
geometry, the Zarr stores, per-slide records (tissue, spots, stage records), ST section
loaders, pyramid TIFFs, checksums, atomic writes and figures (headless matplotlib).

Imports only the root modules (``errors``, ``units``, ``config``, ``paths``) and itself.
"""
