"""The edge: Caddy routes every tenant host, terminates TLS, and certifies hosts automatically."""
