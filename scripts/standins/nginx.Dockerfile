# Stand-in for nginx:1.27.5-alpine: Debian's nginx laid out like the official image
# (user nginx 101:101, /etc/nginx, temp files under /var/cache/nginx, wget for health
# checks, the entrypoint that renders /etc/nginx/templates/*.template with envsubst).
ARG BASE
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       nginx-light wget gettext-base \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && groupadd --system --gid 101 nginx \
    && useradd --system --uid 101 --gid nginx --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin nginx \
    && mkdir -p /var/cache/nginx /etc/nginx/templates /etc/nginx/conf.d /docker-entrypoint.d \
    && rm -rf /var/lib/nginx && ln -s /var/cache/nginx /var/lib/nginx \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
COPY nginx-entrypoint.sh /docker-entrypoint.sh
ENTRYPOINT ["/docker-entrypoint.sh"]
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
