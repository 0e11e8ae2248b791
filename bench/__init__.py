"""Benchmarks that start the real stack on loopback and measure it from the client side."""
