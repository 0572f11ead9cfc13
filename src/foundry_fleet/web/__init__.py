"""The fleet's own web endpoints, published by the edge on the fleet host."""
