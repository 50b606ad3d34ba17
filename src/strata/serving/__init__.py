"""Serving: the multistage pipeline, ANN index, Bloom filter, inference backends and HTTP app."""
