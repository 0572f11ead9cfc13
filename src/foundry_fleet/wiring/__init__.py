"""Reads the configuration, picks the drivers, builds the services and starts the adapters."""
