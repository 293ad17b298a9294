"""REST gateway: FastAPI over the score service, and the static web page."""
