#!/usr/bin/env bash
# Create the ansible-vault file of a site's secrets, with fresh random values:
#
#   scripts/make-vault.sh inventory/example        # writes inventory/example/group_vars/all/vault.yml
#
# The vault password comes from $ANSIBLE_VAULT_PASSWORD_FILE when set (ansible-vault reads it), else is asked for.
# The plaintext never touches the disk: it is piped straight into `ansible-vault encrypt`.
# Later: `ansible-vault edit|view|rekey inventory/<site>/group_vars/all/vault.yml`.
set -euo pipefail
SITE=${1:?usage: $0 inventory/<site>}
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
OUT="$SITE/group_vars/all/vault.yml"
if [ -e "$OUT" ]; then
  echo "make-vault: $OUT exists; edit it with: ansible-vault edit $OUT" >&2
  exit 1
fi
mkdir -p "$(dirname "$OUT")"
umask 077
"$VENV/bin/python" -c '
import secrets
print("---")
for name in ("root_secret", "nodes_secret", "database_password"):
    print(f"vault_zonefarm_{name}: {secrets.token_urlsafe(32)}")
' | "$VENV/bin/ansible-vault" encrypt --output "$OUT" -
echo "make-vault: wrote $OUT (encrypted); run site.yml with --ask-vault-pass or --vault-password-file"
