"""The fleet in Prometheus' text format: what /metrics answers (see README, Metrics)."""
