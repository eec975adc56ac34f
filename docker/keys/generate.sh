#!/usr/bin/env bash
# Generate ECDSA P-384 key pairs for SuperNode authentication, which docker-compose.yml turns
# on (`--enable-supernode-auth`): the SuperLink accepts only SuperNodes whose key it knows.
#
#   docker/keys/generate.sh [OUT_DIR] [COUNT]
#
# Writes OUT_DIR/supernode-1 ... supernode-COUNT (private, OpenSSH format) and the matching
# .pub files; OUT_DIR defaults to this script's folder, COUNT to 3 (one per compose SuperNode).
# Run it where the SuperNode runs: the private key never leaves that machine; only the .pub
# file goes to the SuperLink's operator, who registers it before the SuperNode connects:
#   flwr supernode register docker/keys/supernode-1.pub fedadamw-docker
# Existing keys are kept.
set -euo pipefail

out_dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
count="${2:-3}"
mkdir -p "$out_dir"
for i in $(seq 1 "$count"); do
    key="$out_dir/supernode-$i"
    if [[ -f "$key" ]]; then
        echo "keeping $key"
        continue
    fi
    # -N "": the SuperNode reads the key unattended, so it has no passphrase.
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedadamw-supernode-$i" -f "$key"
    echo "wrote $key and $key.pub"
done
