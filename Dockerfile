# One image for every Conveyor process: worker, beat, Flower, the one-shot migration.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 conveyor
WORKDIR /app

COPY pyproject.toml README.md alembic.ini ./
COPY cli.py ./
COPY config ./config
COPY jobs ./jobs
COPY worker ./worker
COPY tasks ./tasks
COPY scheduler ./scheduler
COPY migrations ./migrations
COPY samples ./samples
RUN pip install . && mkdir -p /data /results /var/lib/flower && chown conveyor /data /results /var/lib/flower

USER conveyor
ENV CONVEYOR_DATA_DIR=/data CONVEYOR_RESULTS_DIR=/results
ENTRYPOINT ["conveyor"]
CMD ["worker"]
