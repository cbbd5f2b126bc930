"""Assets, one module per stage."""
