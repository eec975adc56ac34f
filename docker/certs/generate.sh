#!/usr/bin/env bash
# The server side's credentials: a private CA, a SuperLink server certificate signed by it,
# and the SuperExec shared secret.
#
#   docker/certs/generate.sh [OUT_DIR] [EXTRA_NAME ...]
#
# OUT_DIR defaults to this script's folder (docker-compose.yml mounts its files read-only under
# /app/certs). The certificate's names always include the compose service name `superlink`,
# `localhost`, 127.0.0.1 and ::1; pass a remote SuperLink's DNS names or IP addresses as
# EXTRA_NAMEs so that SuperNodes on other machines can verify it. Existing files are kept:
# delete OUT_DIR/ca.crt to make new certificates, OUT_DIR/superexec.secret for a new secret.
#
# Only ca.crt leaves the server machine: SuperNodes and `flwr` users need it to verify the
# SuperLink, and it grants nothing. server.key, ca.key and superexec.secret stay on the server.
set -euo pipefail

out_dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
shift || true
days="${CERT_DAYS:-365}"
mkdir -p "$out_dir"

# The SuperExec secret: the SuperLink's Runtime API gives a run's tasks (the ServerApp, with
# the run's code) only to a `flower-superexec` that signs its requests with it. Raw bytes, read
# as they are by both sides: 32 random bytes as 64 hex digits, no newline.
if [[ -f "$out_dir/superexec.secret" ]]; then
    echo "keeping $out_dir/superexec.secret"
else
    (umask 077 && openssl rand -hex 32 | tr -d '\n' >"$out_dir/superexec.secret")
    echo "wrote $out_dir/superexec.secret"
fi

if [[ -f "$out_dir/ca.crt" ]]; then
    echo "certificates already exist in $out_dir (delete ca.crt to regenerate)"
    exit 0
fi

# Subject alternative names: what SuperNodes, the ServerApp process and `flwr` dial.
sans="DNS:superlink,DNS:localhost,IP:127.0.0.1,IP:::1"
ip_re='^[0-9.]+$|:'
for name in "$@"; do
    if [[ "$name" =~ $ip_re ]]; then sans+=",IP:$name"; else sans+=",DNS:$name"; fi
done

# P-384 keys: as strong as RSA-7680 and generated instantly (tests create fresh ones).
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes -sha384 \
    -days "$days" -subj "/O=fedadamw/CN=fedadamw CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$out_dir/ca.key" -out "$out_dir/ca.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes -sha384 \
    -subj "/O=fedadamw/CN=superlink" \
    -keyout "$out_dir/server.key" -out "$out_dir/server.csr" 2>/dev/null
openssl x509 -req -in "$out_dir/server.csr" -CA "$out_dir/ca.crt" -CAkey "$out_dir/ca.key" \
    -CAcreateserial -days "$days" -sha384 -out "$out_dir/server.pem" \
    -extfile <(printf '%s\n' "subjectAltName=$sans" "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth") \
    2>/dev/null
rm -f "$out_dir/server.csr" "$out_dir/ca.srl"
# Private keys stay private; containers run as Flower's user `app` (uid 49999), so on Linux
# hand the server key and the secret to it (docs/deployment.md, Start):
#   sudo chown 49999:49999 OUT_DIR/server.key OUT_DIR/superexec.secret
chmod 644 "$out_dir/ca.crt" "$out_dir/server.pem"
chmod 600 "$out_dir/ca.key" "$out_dir/server.key"
echo "wrote $out_dir/{ca.crt,server.pem,server.key} (names: $sans)"
