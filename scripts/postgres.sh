# Source this: installs (if missing) and starts PostgreSQL from Debian's packages, creates the
# role and database the sweep tests use, and exports ATTNLAB_TEST_POSTGRES.
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
PG_VERSION=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$PG_VERSION main"; then
  pg_createcluster "$PG_VERSION" main >/dev/null
fi
pg_ctlcluster "$PG_VERSION" main start 2>/dev/null || true
for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_roles WHERE rolname='attnlab'\" | grep -q 1 || psql -q -c \"CREATE ROLE attnlab LOGIN PASSWORD 'attnlab-ci-secret'\""
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='attnlab'\" | grep -q 1 || createdb -O attnlab attnlab"
export ATTNLAB_TEST_POSTGRES="postgresql://attnlab:attnlab-ci-secret@127.0.0.1:5432/attnlab"
