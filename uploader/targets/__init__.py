"""One sans-I/O protocol module per target: they describe requests and read responses."""
