"""hmrmamba: video human mesh recovery with geometry-aware dual-scan Mamba lifting.

Importing the package has no side effects: no files are written, no devices are touched.
"""

__version__ = "0.1.0"
