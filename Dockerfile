# One image for every gateway-side service of docker-compose.yml: the nodes, the example
# backends, the dashboard, the herd client and `gateway status`.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY clients ./clients
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --no-create-home gateway
COPY deploy ./deploy
# Nothing here needs root: the services listen on unprivileged ports.
USER gateway
CMD ["gateway", "--help"]
