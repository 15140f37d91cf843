"""F3OCUS as a plain library: layer importance, server-side layer selection, partial training and
layer-wise aggregation for federated fine-tuning of vision-language models.

Nothing in this package imports Flower; ``server_app`` and ``client_app`` are thin wrappers around it.
"""
