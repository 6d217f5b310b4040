# One image for the gateway, the example backends and the herd client.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY clients ./clients
RUN pip install --no-cache-dir .
COPY deploy ./deploy
