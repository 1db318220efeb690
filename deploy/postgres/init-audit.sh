#!/bin/sh
# Runs once, when the postgresql volume is first initialised (docker-entrypoint-initdb.d): the audit
# store's own database, owned by its own role, and the runtime role the bot runs as. The
# `audit-schema` service then creates the tables as the owner and grants the runtime role only what
# docs/security.md lists (read and append: never update or delete). On a volume created before this
# file existed, run the same statements once by hand (docs/operations.md).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner_password="$AUDIT_OWNER_PASSWORD" -v bot_password="$AUDIT_BOT_PASSWORD" <<'SQL'
CREATE ROLE playbook_audit LOGIN PASSWORD :'owner_password';
CREATE ROLE playbook_bot LOGIN PASSWORD :'bot_password';
CREATE DATABASE playbook_audit OWNER playbook_audit;
REVOKE ALL ON DATABASE playbook_audit FROM PUBLIC;
GRANT CONNECT ON DATABASE playbook_audit TO playbook_bot;
\connect playbook_audit
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT ALL ON SCHEMA public TO playbook_audit;
SQL
