"""nginx in front of the REST gateway: the config template and its renderer (`nginx.render`)."""
