"""The engines' fixtures (tests/warehouses/engines.py) for every test here: one instance each
per test run, so the JVM of local Spark starts once."""

from tests.warehouses.engines import *  # noqa: F403 - the fixture of each engine in ENGINES
