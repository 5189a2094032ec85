"""Real datasets: the reader registry, shared reader tools, one module per dataset, video frames."""
