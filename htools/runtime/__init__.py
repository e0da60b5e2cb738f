"""The runtime: the run loop, the task frame, progress, pre-flight checks, memory probes
and the sample streams every task shares."""
