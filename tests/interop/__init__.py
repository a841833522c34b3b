"""Interoperability tests against real Salt 3006, 3007 and 3008 (``scripts/salt-venvs``)."""
