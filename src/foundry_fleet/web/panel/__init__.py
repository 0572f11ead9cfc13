"""The web panel on the fleet host: server-rendered pages (Jinja2) over the operations service, made live
by htmx and server-sent events served from this package (no build step, nothing from another site)."""
