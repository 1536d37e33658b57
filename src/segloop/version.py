"""segloop's version, in a module of its own.

It sits at the bottom of the import layers: the Segment message builder, the HTTP
transport and the SQL cache name the version without importing the package's
``__init__`` (which would point back up at the pipeline).
"""

from __future__ import annotations

__version__ = "0.1.0"
