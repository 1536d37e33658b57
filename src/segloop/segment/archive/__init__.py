"""The collector's archive files (JSON lines per day) and loading them into a warehouse.

Import-free on purpose: the collector needs only ``files``, not the loader's writers.
"""
