"""Sans-IO protocol logic: standard library and h11 only, never trio."""
