"""Embed service: ArcFace embeddings of aligned crops, batched across requests."""
