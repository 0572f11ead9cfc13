"""Pure rules of the fleet: no I/O here, so every rule is unit-testable."""
