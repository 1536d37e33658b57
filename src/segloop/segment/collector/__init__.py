"""segloop's own Segment-compatible collector: the HTTP app, request checks, commits, server.

Import-free on purpose: importing a submodule must not pull in Starlette for the others.
"""
