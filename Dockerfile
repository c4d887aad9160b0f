# relaybird: a slim image that runs the daemon as a non-root user, state in the /data volume.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin relaybird \
    && mkdir -p /data /config \
    && chown relaybird:relaybird /data
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 9810
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9810/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["relaybird"]
CMD ["run", "-c", "/config/relaybird.toml"]
