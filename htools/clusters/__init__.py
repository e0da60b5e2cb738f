"""Where tasks run: the embedded cluster, a scheduler address, k8s://, slurm://, GPUs."""
