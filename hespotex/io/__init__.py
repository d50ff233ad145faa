"""Reading slides and writing files: slide reader backends and their factory, the tiled-TIFF
tile cache, windowed patch reading, the Zarr stores, pyramid TIFFs, atomic writes and figures
(headless matplotlib, written atomically).

Imports only the root modules (``errors``, ``units``, ``config``, ``paths``) and itself.
"""
