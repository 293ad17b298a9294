"""Score service: analyze, enroll, identify, verify; galleries in Qdrant, analyses cached in Redis."""
