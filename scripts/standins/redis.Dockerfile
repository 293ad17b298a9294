# Stand-in for redis:7.4.6-alpine: Debian's redis-server and redis-cli, user redis
# (999:1000) owning /data, the working directory and the volume.
ARG BASE
FROM ${BASE}
RUN groupadd --system --gid 1000 redis \
    && useradd --system --uid 999 --gid redis --no-create-home --home-dir /data \
       --shell /usr/sbin/nologin redis \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /data
WORKDIR /data
ENTRYPOINT ["docker-entrypoint.sh"]
EXPOSE 6379
CMD ["redis-server"]
