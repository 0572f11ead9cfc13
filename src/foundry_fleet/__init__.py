"""foundry-fleet: host Foundry Virtual Tabletop for many game masters on one server."""

__version__ = "0.1.0"
