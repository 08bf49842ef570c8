#!/bin/sh
# A second database for MLflow beside Prefect's (the postgres image runs this once, on an empty volume).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE mlflow OWNER \"$POSTGRES_USER\";"
