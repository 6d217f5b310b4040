# One image for every gateway-side service of docker-compose.yml: the nodes, the example
# backends, the dashboard, the herd client and `gateway status`.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# Dependencies come from the hash-locked files (as `make` installs them), so the image runs
# exactly what the suite ran; they are a layer of their own, rebuilt only when a lock changes.
# Build tools first: sdists in the lock build with them (--no-build-isolation).
COPY requirements/build.txt requirements/runtime.txt ./requirements/
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements/build.txt \
    && pip install --no-cache-dir --require-hashes --no-deps --no-build-isolation \
        -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY clients ./clients
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 --no-create-home gateway
COPY deploy ./deploy
# Nothing here needs root: the services listen on unprivileged ports.
USER gateway
CMD ["gateway", "--help"]
