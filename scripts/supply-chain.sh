#!/usr/bin/env bash
# Supply-chain check with cargo-deny (deny.toml, docs/security.md "Supply chain"):
#   - licenses, bans and sources: always;
#   - advisories: when ADVISORY_DB names a RustSec advisory database on disk, read offline.
#
#   scripts/supply-chain.sh                                   # licenses, bans, sources
#   ADVISORY_DB=/path/to/advisory-db scripts/supply-chain.sh  # and advisories
#
# ADVISORY_DB is either a git clone of RustSec's advisory-db or a plain copy of one with a
# SNAPSHOT file ("<commit> (<YYYY-MM-DD>)") beside its crates/ directory. The directory itself is
# only read. Without ADVISORY_DB the advisories part is skipped (and said so); nothing else
# changes.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: the offline database layout below (directory name, freshness rules) is cargo-deny's.
CARGO_DENY_VERSION=0.20.2
# cargo-deny 0.20 opens its default database (RustSec's advisory-db repository) at
# <db-path>/advisory-db-<xxhash64 of the lower-cased repository url>; this is that name.
DB_DIR_NAME=advisory-db-3157b0e258782691
STALE_WARN_DAYS=90

now() { date +%s; }

start=$(now)
if [ "$(cargo deny --version 2>/dev/null || true)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  echo "installing cargo-deny $CARGO_DENY_VERSION (cargo install --locked; takes a few minutes)"
  # nice: it compiles on the same cores as everything else on the machine.
  nice cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --quiet
  echo "cargo-deny installed in $(($(now) - start)) s"
fi

# Duplicate versions are warnings; their inclusion graphs would fill the log, so they are hidden
# (run `cargo deny check bans` for them).
start=$(now)
cargo deny --locked check --hide-inclusion-graph licenses bans sources
echo "licenses, bans, sources: checked in $(($(now) - start)) s"

if [ -z "${ADVISORY_DB:-}" ]; then
  echo "advisories: SKIPPED (looked for a RustSec advisory database in \$ADVISORY_DB, which is not set);" \
    "licenses, bans and sources were checked"
  exit 0
fi
if [ ! -d "$ADVISORY_DB/crates" ]; then
  echo "ADVISORY_DB=$ADVISORY_DB: no crates/ directory there, not an advisory database" >&2
  exit 1
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
db="$root/$DB_DIR_NAME"

# cargo-deny reads a database only from a git working tree: it dates the database by the
# repository's FETCH_HEAD, or else by its HEAD commit (or the HEAD file, whichever is newer).
if [ -e "$ADVISORY_DB/.git" ]; then
  ln -s "$(cd "$ADVISORY_DB" && pwd)" "$db"
  echo "advisories: database $ADVISORY_DB (git, HEAD $(git -C "$ADVISORY_DB" rev-parse --short HEAD))"
else
  # A plain snapshot: a throwaway repository in a temporary copy, dated to the snapshot's date so
  # that cargo-deny's staleness limit applies to the data's real age, not to today.
  snapshot_file="$ADVISORY_DB/SNAPSHOT"
  snapshot=$(cat "$snapshot_file" 2>/dev/null || true)
  snapshot_date=$(printf '%s' "$snapshot" | sed -n 's/^.*(\([0-9]\{4\}-[0-9]\{2\}-[0-9]\{2\}\)).*$/\1/p' | head -n1)
  if [ -z "$snapshot_date" ]; then
    echo "ADVISORY_DB=$ADVISORY_DB is not a git repository and has no SNAPSHOT file" \
      "\"<commit> (<YYYY-MM-DD>)\": the database's age is unknown" >&2
    exit 1
  fi
  cp -R "$ADVISORY_DB/." "$db"
  chmod -R u+w "$db"
  stamp="${snapshot_date}T00:00:00Z"
  git -C "$db" init -q
  git -C "$db" add -A
  GIT_AUTHOR_DATE="$stamp" GIT_COMMITTER_DATE="$stamp" \
    git -C "$db" -c user.name=supply-chain -c user.email=supply-chain@localhost \
    -c commit.gpgsign=false commit -q --no-verify -m "advisory-db snapshot $snapshot"
  touch -d "$stamp" "$db/.git/HEAD"
  age_days=$((($(now) - $(date -d "$stamp" +%s)) / 86400))
  echo "advisories: database $ADVISORY_DB (snapshot $snapshot, $age_days days old)"
  if [ "$age_days" -gt "$STALE_WARN_DAYS" ]; then
    echo "WARNING: the advisory database is more than $STALE_WARN_DAYS days old: advisories" \
      "published since $snapshot_date are not checked (deny.toml fails the check past a year)"
  fi
fi

# --offline: no fetch of the database (and cargo metadata from the local cache, which the run
# above has filled).
start=$(now)
SUPPLY_CHAIN_ADVISORY_DBS="$root" cargo deny --offline --locked check advisories
echo "advisories: checked in $(($(now) - start)) s"
