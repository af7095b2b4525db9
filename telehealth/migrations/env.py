"""Alembic environment: migrations run on the connection the hub hands over (db.migrate)."""

from alembic import context

import telehealth.archive.models
import telehealth.auth.models
import telehealth.cases.models
import telehealth.consults.models
import telehealth.dicomweb.models
import telehealth.ecg.models
import telehealth.institutions.models
import telehealth.reports.models  # noqa: F401  (tables register on Base.metadata)
from telehealth.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `telehealth migrate`, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
