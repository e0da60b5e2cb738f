"""User code: a script (process_sample, sort_key, reduce_samples, init), shell commands,
shipping a script's modules to workers, and applying them to samples."""
