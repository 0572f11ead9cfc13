"""The daemon's local control API (HTTP over a unix socket) and its client."""
