"""Scale-out tests: a real multi-node Ray cluster, PostgreSQL-backed MLflow."""
