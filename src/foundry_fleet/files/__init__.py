"""Writing the fleet's own files safely: whole or not at all, with their final mode from the start."""
