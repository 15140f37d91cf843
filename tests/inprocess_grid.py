"""The in-process Grid for strategy tests without a SuperLink; it lives in
:mod:`f3ocus_flower.inprocess`, which the comparison runner uses too."""

from f3ocus_flower.inprocess import InProcessGrid, client_handlers, run_server_app

__all__ = ["InProcessGrid", "client_handlers", "run_server_app"]
