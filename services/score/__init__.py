"""Score service: analyze, enroll, identify, verify; faces in Qdrant, analyses in a cache."""
