# One image for every gleitzeit process: migrations, Celery workers and beat (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

# The package first, so editing examples/ or celeryconfig.py does not reinstall dependencies.
COPY pyproject.toml README.md ./
COPY gleitzeit ./gleitzeit
RUN pip install ".[postgres]"

COPY examples ./examples
COPY celeryconfig.py ./

# Not root; /app stays writable for the celery beat schedule file.
RUN useradd --system --create-home gleitzeit && chown gleitzeit /app
USER gleitzeit
