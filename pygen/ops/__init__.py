"""Public functional API, one module per family."""
