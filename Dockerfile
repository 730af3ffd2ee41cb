# outagewatch: multi-stage, slim, non-root. Build: docker build -t outagewatch:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/outagewatch \
 && /opt/outagewatch/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/outagewatch/bin/pip install --no-cache-dir '.[uvloop]'

FROM python:3.11-slim
LABEL org.opencontainers.image.title="outagewatch" \
      org.opencontainers.image.description="Synthetic monitoring of mail platforms with incident mails"
RUN groupadd --gid 10001 outagewatch \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin outagewatch \
 && mkdir -p /var/lib/outagewatch && chown 10001:10001 /var/lib/outagewatch
COPY --from=build /opt/outagewatch /opt/outagewatch
ENV PATH=/opt/outagewatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9817
VOLUME ["/var/lib/outagewatch"]
ENTRYPOINT ["outagewatch"]
CMD ["run", "-c", "/etc/outagewatch/outagewatch.yaml"]
