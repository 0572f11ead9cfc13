"""Runtime drivers: run and supervise an instance's process."""
