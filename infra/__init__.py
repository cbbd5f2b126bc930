"""Bottom layer: settings read from the environment, local services, state paths."""
