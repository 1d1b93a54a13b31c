#!/usr/bin/env bash
# Build the wheelhouse the `common` role installs from with `pip --no-index`, so deployed
# hosts never need a package index (air-gapped sites are common in research infrastructure).
# Output, for the role to copy as two single files:
#   var/dist/zonefarm-wheelhouse.tar  the project wheel and every dependency
#   var/dist/zonefarm-share.tar       playbooks/{tasks,farm} (task catalogue, dispatcher plays), library/, module_utils/
#
# Dependency wheels are cached in the wheelhouse and reused; the project wheel is rebuilt
# every time, reproducibly (SOURCE_DATE_EPOCH), so an unchanged tree gives a byte-identical
# wheel and a re-deploy reports changed=0.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VAR=${VAR:-$PWD/var}
WHEELHOUSE=${WHEELHOUSE:-$VAR/wheelhouse}
mkdir -p "$WHEELHOUSE"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
DIST=${DIST:-$VAR/dist}
mkdir -p "$DIST"

# Fast path (a re-run of `make up`): when nothing the two archives are made of changed since the
# last build (the files the wheel and the share are built from, this script among them, and the
# dependency wheels), they are left as they are; pip's resolve and the wheel build took ~10 s.
inputs_hash() {
  {
    echo "$SOURCE_DATE_EPOCH $("$VENV/bin/python" -V 2>&1)"
    git ls-files -co --exclude-standard -z | grep -zv '^tests/\|^bench/' | sort -z \
      | { xargs -0 sha256sum -- 2>/dev/null || true; }
    ls -l --time-style=+%s "$WHEELHOUSE" | grep -v '^total\| zonefarm-[^ ]*\.whl$' || true
  } | sha256sum | cut -d' ' -f1
}
STAMP="$DIST/.inputs.sha256"
INPUTS=$(inputs_hash)
if [ -f "$DIST/zonefarm-wheelhouse.tar" ] && [ -f "$DIST/zonefarm-share.tar" ] && [ -f "$STAMP" ] \
   && [ "$(cat "$STAMP")" = "$INPUTS" ]; then
  echo "wheelhouse: inputs unchanged since the last build; $DIST kept"
  exit 0
fi
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
# Dependencies: reuse what is already in the wheelhouse, fetch only what is missing.
"$VENV/bin/pip" wheel -q --find-links "$WHEELHOUSE" --wheel-dir "$WHEELHOUSE" \
  -r <("$VENV/bin/python" - <<'PY'
import configparser
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
print(cfg["options"]["install_requires"].strip())
PY
) 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# The project itself, from a clean copy of the tracked and untracked-but-not-ignored files.
git ls-files -co --exclude-standard -z | grep -zv '^tests/\|^bench/' | tar --null -T - -cf - | tar -xf - -C "$BUILD"
"$VENV/bin/pip" wheel -q --no-deps --no-build-isolation --wheel-dir "$BUILD/dist" "$BUILD" >/dev/null
NEW=$(ls "$BUILD"/dist/zonefarm-*.whl)
OLD="$WHEELHOUSE/$(basename "$NEW")"
if [ -f "$OLD" ] && cmp -s "$NEW" "$OLD"; then
  echo "wheelhouse: $WHEELHOUSE ($(ls "$WHEELHOUSE" | wc -l) wheels, zonefarm unchanged)"
else
  rm -f "$WHEELHOUSE"/zonefarm-*.whl
  cp "$NEW" "$WHEELHOUSE/"
  echo "wheelhouse: $WHEELHOUSE ($(ls "$WHEELHOUSE" | wc -l) wheels, zonefarm rebuilt)"
fi

# Pack both deterministically: same inputs, same bytes, so the copy reports no change.
pack() {  # pack OUT DIR [NAMES...]: a reproducible tar of NAMES under DIR (modes do not depend on the umask)
  local out=$1 dir=$2; shift 2
  tar --sort=name --mtime=@"$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
      --mode='u+rwX,go+rX,go-w' --dereference --format=gnu -C "$dir" -cf "$out.tmp" "$@"
  if [ -f "$out" ] && cmp -s "$out.tmp" "$out"; then rm -f "$out.tmp"; else mv "$out.tmp" "$out"; fi
}
pack "$DIST/zonefarm-wheelhouse.tar" "$WHEELHOUSE" .
mkdir -p "$BUILD/share/playbooks"
for d in playbooks/tasks playbooks/farm; do [ -d "$d" ] && cp -rL "$d" "$BUILD/share/playbooks/"; done
cp -rL library module_utils "$BUILD/share/"
find "$BUILD/share" -name __pycache__ -prune -exec rm -rf {} +
pack "$DIST/zonefarm-share.tar" "$BUILD/share" playbooks library module_utils
# Hashed again: the dependency step above may have added wheels.
inputs_hash > "$STAMP"
echo "dist: $DIST/zonefarm-wheelhouse.tar $DIST/zonefarm-share.tar"
