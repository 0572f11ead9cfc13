// Small behaviours htmx does not cover; the panel works without them.
