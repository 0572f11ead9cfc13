"""Storage drivers: where shared assets, instance data and installs live."""
