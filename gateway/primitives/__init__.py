"""Pure Deferred building blocks; nothing here imports the global reactor."""
