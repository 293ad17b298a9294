# Stand-in for python:3.11.15-slim-bookworm: Debian's Python 3.11 where the official image
# keeps its own build (/usr/local/bin), so the project's Dockerfile runs unchanged.
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && for name in python3.11 python3 python; do ln -s /usr/bin/python3.11 /usr/local/bin/$name; done
CMD ["python3"]
