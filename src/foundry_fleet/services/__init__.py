"""The service layer: every operation on the fleet, and the loop that makes the host match the desired state."""
