#!/usr/bin/env bash
# The Debian packages the back office's tests use: PostgreSQL (a throwaway server per run) and
# Chromium (renders the HTML reports). Installed when missing and we may (root with apt-get);
# otherwise those tests skip and say how to install them (CI, where CI is set, fails them).
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The package's own cluster is not ours: the tests start their own servers.
    if command -v pg_lsclusters >/dev/null; then
        pg_lsclusters -h | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true; done
    fi
else
    echo "note: ${missing[*]} missing; their tests will skip (apt-get install ${missing[*]})"
fi
