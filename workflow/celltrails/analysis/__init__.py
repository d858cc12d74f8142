"""Downstream analysis of embeddings: classifiers from sparse annotations and DTW pseudo-time."""
