"""Tests of saltbus. A package so that helpers import as ``tests.<...>`` (see
``tests/interop/salt_peer_client.py``): pytest then puts the repository root on ``sys.path``."""
