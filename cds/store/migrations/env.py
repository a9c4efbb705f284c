"""Alembic environment: runs on the connection `cds.store.storage.migrate` passes in."""

from alembic import context

from cds.store.storage import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
