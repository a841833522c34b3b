"""Tests of saltbus. A package so that helpers import as ``tests.<...>`` (see
``tests/interop/saltpeer.py``): pytest then puts the repository root on ``sys.path``."""
