# One image for the front door (`serve`) and the worker (`worker`). Multi-stage: build wheels with
# the compilers, ship only the virtualenv, run as a non-root user.
FROM python:3.11.10-slim-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11.10-slim-bookworm
RUN groupadd --system --gid 10001 bot && useradd --system --uid 10001 --gid bot --home /app bot
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chown=bot:bot playbooks ./playbooks
COPY --chown=bot:bot policies ./policies
ENV PATH=/opt/venv/bin:$PATH \
    PLAYBOOK_BOT_PLAYBOOKS_DIR=/app/playbooks \
    PLAYBOOK_BOT_POLICIES_DIR=/app/policies \
    PLAYBOOK_BOT_DATA_DIR=/data \
    PLAYBOOK_BOT_HTTP_HOST=0.0.0.0
RUN mkdir -p /data && chown bot:bot /data
USER bot
EXPOSE 8080
# Healthchecks call /readyz with the interpreter already in the image (no curl needed).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PLAYBOOK_BOT_HEALTH_PORT', '8080'), timeout=4)"
ENTRYPOINT ["playbook-bot"]
CMD ["serve"]
