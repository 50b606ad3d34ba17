"""strata: a multistage multimodal recommender and a CTR service on one CPU or on Kubernetes."""

__version__ = "0.1.0"
