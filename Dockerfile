# One image for every process of the stack: the four Nameko services, the
# gateway and the one-shot migration. docker-compose.yml picks the command.
FROM python:3.11-slim

# GATEWAY_HOST: inside a container the gateway must listen on all interfaces.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    GATEWAY_HOST=0.0.0.0

WORKDIR /app

# Invoice PDFs embed the fonts invoice_service ships; Droid Sans Fallback is the
# optional extra for Chinese, Japanese and Korean names (without it they print as boxes).
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-droid-fallback \
    && rm -rf /var/lib/apt/lists/*

# config.yml, alembic.ini, migrations/ and gateway/gunicorn_conf.py are read
# from the working directory at run time, so the whole project is copied
# (.dockerignore keeps the venv, git and test output out).
COPY . .
RUN pip install --no-cache-dir . \
    && rm -rf build *.egg-info \
    && useradd --uid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin app

USER app

EXPOSE 8000

CMD ["gunicorn", "-c", "gateway/gunicorn_conf.py", "gateway.wsgi:app"]
