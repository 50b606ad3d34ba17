"""Kubeflow pipelines: thin components over the same library functions the CLI calls."""
