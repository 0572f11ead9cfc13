"""Paths of the fleet's web app that the edge routes to by name (both sides must agree on them)."""

# Where the edge sends a visit to an instance that is to run and does not serve (Caddy rewrites the
# request to it, passing the host and the path asked for); never published on any host.
WAKE_VISIT_PATH = "/wake/visit"
# On every tenant host: where the waiting page refreshes to, held until the instance serves.
WAKE_WAIT_PATH = "/wake/wait"

# The web panel, on the fleet host only. Caddy publishes these paths there (and nothing else of the app).
PANEL_STATIC = "/panel/static"
PANEL_EVENTS = "/panel/events"  # server-sent events: instance rows as they change
PANEL_LOGIN = "/login"
PANEL_LOGOUT = "/logout"
METRICS_PATH = "/metrics"
PANEL_PATHS = ("/", "/instances", "/instances/*", "/admin/*", "/panel/*", PANEL_LOGIN, PANEL_LOGIN + "/*",
               PANEL_LOGOUT)
