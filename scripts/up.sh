#!/usr/bin/env bash
# `make up`: deploy the whole platform on this machine (inventory/local.yml), then submit a
# smoke `shell` task through the API and print its result, the API URL and where the admin
# credential is. Running it again changes nothing (the play recap shows changed=0).
#
#   ZONEFARM_LOCAL_ROOT    where everything goes (default var/local)
#   ZONEFARM_LOCAL_LISTEN  the API's host:port (default 127.0.0.1:8700)
#   ZONEFARM_SMOKE_TIMEOUT seconds to wait for the smoke task (default 180)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VAR=${VAR:-$PWD/var}
export ZONEFARM_LOCAL_ROOT=${ZONEFARM_LOCAL_ROOT:-$VAR/local}
export ZONEFARM_LOCAL_LISTEN=${ZONEFARM_LOCAL_LISTEN:-127.0.0.1:8700}
SECRETS=${ZONEFARM_SECRETS:-$VAR/secrets.yml}
PLAYBOOK=${ZONEFARM_PLAYBOOK:-site.yml}

[ -x "$VENV/bin/ansible-playbook" ] || { echo "up: $VENV is missing; run 'make up' (it builds the venv)" >&2; exit 1; }
VENV=$VENV VAR=$VAR scripts/install-collections.sh
VENV=$VENV VAR=$VAR scripts/build-wheelhouse.sh

# Local secrets: generated once, 0600, never committed (var/ is git-ignored). Multi-host
# sites keep theirs in ansible-vault instead (scripts/make-vault.sh).
mkdir -p "$VAR"
if [ ! -s "$SECRETS" ]; then
  (umask 077; "$VENV/bin/python" - "$SECRETS" <<'PY'
import secrets, sys
with open(sys.argv[1], "w") as out:
    out.write("# Local deployment secrets, made by scripts/up.sh. Keep private.\n")
    for name in ("zonefarm_root_secret", "zonefarm_nodes_secret"):
        out.write(f"{name}: {secrets.token_urlsafe(32)}\n")
PY
  )
  echo "up: generated $SECRETS (mode 0600)"
fi
chmod 600 "$SECRETS"

# A re-run with nothing changed skips the playbook: the same tree (roles, playbooks, inventory, the
# archives: var/dist/.inputs.sha256), collections, secrets and settings as the last successful
# deploy, and every service of the private supervisord RUNNING with the API healthy. Its re-run
# would report changed=0 after ~130 Ansible round-trips (~30 s on a quiet machine).
# ZONEFARM_UP_FORCE=1 runs it anyway (e.g. to put back a file edited by hand).
UP_STAMP="$ZONEFARM_LOCAL_ROOT/.up-inputs.sha256"
up_inputs() {
  {
    cat "$VAR/dist/.inputs.sha256" 2>/dev/null || echo "no dist stamp $RANDOM$RANDOM"
    cat collections/ansible_collections/*/*/MANIFEST.json 2>/dev/null
    sha256sum "$SECRETS"
    echo "$ZONEFARM_LOCAL_ROOT $ZONEFARM_LOCAL_LISTEN $PLAYBOOK $("$VENV/bin/ansible-playbook" --version 2>/dev/null | head -n1)"
  } | sha256sum | cut -d' ' -f1
}
up_healthy() {
  supervisorctl -c "$ZONEFARM_LOCAL_ROOT/supervisor/supervisord.conf" status >/dev/null 2>&1 \
    && "$VENV/bin/python" -c 'import sys, requests; sys.exit(requests.get(sys.argv[1], timeout=5).status_code != 200)' \
         "http://$ZONEFARM_LOCAL_LISTEN/api/v1/healthz" 2>/dev/null
}
INPUTS=$(up_inputs)
if [ -z "${ZONEFARM_UP_FORCE:-}" ] && [ -f "$UP_STAMP" ] && [ "$(cat "$UP_STAMP")" = "$INPUTS" ] && up_healthy; then
  echo "up: nothing changed since the last deploy and every service runs; playbook skipped (ZONEFARM_UP_FORCE=1 runs it)"
else
  rm -f "$UP_STAMP"
  PATH="$PWD/$VENV/bin:$PATH" ansible-playbook -i inventory/local.yml "$PLAYBOOK" --extra-vars "@$SECRETS"
  echo "$INPUTS" > "$UP_STAMP"
fi

API="http://$ZONEFARM_LOCAL_LISTEN/api/v1"
CONFIG="$ZONEFARM_LOCAL_ROOT/etc/zonefarm.ini"
"$VENV/bin/python" - "$API" "$SECRETS" "${ZONEFARM_SMOKE_TIMEOUT:-180}" <<'PY'
"""Submit one shell task and wait for it: proof that API, dispatcher and worker work together.

It is submitted as root, who needs no grant: a fresh site has none (README "Who may submit what")."""
import sys, time
import requests, yaml

api, secrets_file, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
with open(secrets_file) as fh:
    root = yaml.safe_load(fh)["zonefarm_root_secret"]
auth = {"Authorization": f"Bearer {root}"}
r = requests.post(f"{api}/tasks", json={"name": "shell", "params": {"argv": ["echo", "hello from zonefarm"]}},
                  headers=auth, timeout=10)
if r.status_code != 201:
    sys.exit(f"smoke: POST /tasks answered {r.status_code}: {r.text}")
task = r.json()
print(f"smoke: task {task['id']} submitted")
deadline = time.monotonic() + timeout
while task["state"] not in ("succeeded", "failed", "cancelled", "timed_out") and time.monotonic() < deadline:
    time.sleep(1)
    task = requests.get(f"{api}/tasks/{task['id']}", headers=auth, timeout=10).json()
log = requests.get(f"{api}/tasks/{task['id']}/log", headers=auth, timeout=10).json()
print(f"smoke: task {task['id']} {task['state']} (exit code {task['exit_code']}, node {task['node'] or task['last_node']})")
if log["text"]:
    print("smoke: output:\n" + "\n".join("  | " + line for line in log["text"].splitlines()))
if task["state"] != "succeeded":
    why = task.get("why") or task.get("reason") or ""
    sys.exit(f"smoke: the task did not succeed within {timeout:.0f}s: {task['state']} {why}")
PY
echo
echo "zonefarm is up."
echo "  API:                 $API   (OpenAPI: $API/openapi.json)"
echo "  admin credential:    root_secret in $CONFIG (also $SECRETS), send as 'Authorization: Bearer ...'"
echo "  logs:                $ZONEFARM_LOCAL_ROOT/log/"
echo "  stop it:             make down"
