"""What the ServerApp and the ClientApp share: the message protocol and the model set-up.

This package may import Flower; :mod:`f3ocus_core` never does. The apps import from here so that a
record key, a conversion or a loading step is written once. It holds only what both apps use and
imports neither app (what one app alone uses lives in ``server_app`` or ``client_app``;
``tests/test_layering.py``).
"""
