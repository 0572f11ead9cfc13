"""The podman runtime: each instance in its own rootful container, driven through Podman's REST API."""
