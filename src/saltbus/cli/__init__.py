"""The ``saltbus`` command line."""
