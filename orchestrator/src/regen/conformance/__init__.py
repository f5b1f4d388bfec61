"""Conformance kits: what any regen.v1 server must do, as checks over plain gRPC.

`regen check generator|scorer|describer ADDRESS` runs a service's checks against any
server, in any language, and prints a table with the reason for each result. The same
checks run in this repository's tests against every server it ships.
"""
