"""What the ServerApp and the ClientApp share: the message protocol and the model set-up.

This package may import Flower; :mod:`f3ocus_core` never does. The apps import from here so that a
record key, a conversion or a loading step is written once.
"""
