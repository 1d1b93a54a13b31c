#!/usr/bin/env bash
# Install the collections in requirements.yml into ./collections.
#
# Galaxy is tried first; where it is unreachable (air-gapped sites, this project's CI) the
# collections are copied out of the PyPI `ansible` distribution, which bundles them. The
# downloaded wheel is cached under var/cache so a re-run needs no network at all.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VAR=${VAR:-$PWD/var}
DEST=collections/ansible_collections
# The `ansible` release that matches the venv's ansible-core 2.19.
ANSIBLE_SPEC=${ANSIBLE_SPEC:-ansible>=12,<13}
mapfile -t WANTED < <("$VENV/bin/python" -c '
import yaml
for c in yaml.safe_load(open("requirements.yml"))["collections"]:
    print(c["name"] if isinstance(c, dict) else c)')

missing=()
for c in "${WANTED[@]}"; do
  [ -f "$DEST/${c/.//}/MANIFEST.json" ] || missing+=("$c")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "collections: all present (${WANTED[*]})"
  exit 0
fi

if timeout 60 "$VENV/bin/ansible-galaxy" collection install -r requirements.yml -p collections >/dev/null 2>&1; then
  echo "collections: installed from Galaxy"
  exit 0
fi

echo "collections: Galaxy unreachable; taking ${missing[*]} from the PyPI '$ANSIBLE_SPEC' distribution"
CACHE="$VAR/cache/ansible-dist"
mkdir -p "$CACHE"
if ! ls "$CACHE"/ansible-*.whl >/dev/null 2>&1; then
  "$VENV/bin/pip" download -q --no-deps --only-binary=:all: -d "$CACHE" "$ANSIBLE_SPEC"
fi
WHEEL=$(ls "$CACHE"/ansible-*.whl | sort -V | tail -n1)
mkdir -p "$DEST"
for c in "${missing[@]}"; do
  ns=${c%%.*}; name=${c#*.}
  rm -rf "$DEST/$ns/$name"
  "$VENV/bin/python" - "$WHEEL" "$ns" "$name" "$DEST" <<'PY'
import sys, zipfile, os
wheel, ns, name, dest = sys.argv[1:]
prefix = f"ansible_collections/{ns}/{name}/"
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith(prefix)]
    if not members:
        sys.exit(f"{wheel} does not bundle {ns}.{name}")
    for m in members:
        target = os.path.join(dest, m[len("ansible_collections/"):])
        if m.endswith("/"):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with zf.open(m) as src, open(target, "wb") as out:
            out.write(src.read())
PY
  echo "collections: $c $("$VENV/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['collection_info']['version'])" "$DEST/$ns/$name/MANIFEST.json")"
done
