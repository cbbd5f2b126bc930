"""The BentoML recommendation service and the logic it serves."""
