# MLflow tracking server on PostgreSQL, serving the artifacts from a volume (docker/compose.yaml).
FROM python:3.12-slim
ENV PIP_NO_CACHE_DIR=1 MLFLOW_DISABLE_TELEMETRY=true
RUN pip install "mlflow>=3.17,<3.18" "psycopg2-binary>=2.9" \
    && useradd --create-home --uid 1000 mlflow \
    && mkdir -p /mlartifacts && chown mlflow /mlartifacts
USER mlflow
EXPOSE 5000
