#!/usr/bin/env bash
# System packages some tests need: headless Chromium (the dashboard browser test, and kaleido's
# PNG/PDF export) and docker-compose (the compose-file schema check). Installs what is missing
# when it runs as root with apt-get, and prints what it found and what it installed.
#
# Without these tools their tests skip and say why. With CI set (to anything but "", 0, false
# or no: tests/needs.py reads it alike) those tests fail instead, so under CI this script exits
# non-zero when it cannot install what is missing: CI must never pass by skipping them.
set -euo pipefail

in_ci() {
    local value="${CI:-}"
    case "${value,,}" in "" | 0 | false | no) return 1 ;; *) return 0 ;; esac
}

need=()
for tool in chromium docker-compose; do
    if path="$(command -v "$tool")"; then
        echo "system-deps: found $tool ($path)"
    else
        need+=("$tool")
    fi
done
if [ ${#need[@]} -eq 0 ]; then exit 0; fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    if in_ci; then
        echo "system-deps: CI is set and ${need[*]} missing; cannot install them here" \
            "(not root, or no apt-get): their tests would fail" >&2
        exit 1
    fi
    echo "system-deps: not root or no apt-get; missing: ${need[*]} (their tests will skip)" >&2
    exit 0
fi

echo "system-deps: installing ${need[*]} with apt-get"
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
    >/dev/null
for tool in "${need[@]}"; do
    if ! path="$(command -v "$tool")"; then
        echo "system-deps: $tool is still missing after apt-get install" >&2
        exit 1
    fi
    echo "system-deps: installed $tool ($path, package version" \
        "$(dpkg-query -W -f='${Version}' "$tool" 2>/dev/null || echo unknown))"
done
