"""Operator tools: bulk enrollment through the score API, backup and restore of score's data."""
