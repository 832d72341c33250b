# One image for every process of a deployment: workers, beat, Flower and the CLI.
#   docker build -t abstractruntime-celery .
#   docker run --rm abstractruntime-celery                    # abstractruntime --help
# docker-compose.yml builds it and runs each service with its own command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs (no .git, no virtualenv, no tests).
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY stores ./stores
COPY workers ./workers

RUN pip install --no-cache-dir '.[celery,flower,metrics,otel]' \
    && rm -rf build ./*.egg-info \
    && useradd --system --create-home --uid 10001 --user-group app

USER app

CMD ["abstractruntime", "--help"]
