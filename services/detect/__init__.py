"""Detect service: SCRFD faces, landmarks, quality and aligned crops."""
