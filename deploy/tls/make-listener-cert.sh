#!/usr/bin/env bash
# Create a small CA and a TLS certificate for each node's API listener (TLS 1.2+), with
# openssl only. Usage: make-listener-cert.sh OUTDIR HOST_OR_IP [HOST_OR_IP ...]
# Writes OUTDIR/ca.pem, OUTDIR/ca-key.pem (keep offline) and OUTDIR/<name>.pem/<name>-key.pem.
set -euo pipefail
out=${1:?usage: $0 OUTDIR HOST_OR_IP...}; shift
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR HOST_OR_IP..." >&2; exit 1; }
umask 077
mkdir -p "$out"
if [ ! -f "$out/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=vaultraft listener CA" -keyout "$out/ca-key.pem" -out "$out/ca.pem" 2>/dev/null
fi
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san="IP:$name"; else san="DNS:$name"; fi
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$out/$name-key.pem" -out "$out/$name.csr" 2>/dev/null
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" -CAcreateserial \
    -days 365 -extfile <(printf "subjectAltName=%s\nextendedKeyUsage=serverAuth\n" "$san") \
    -out "$out/$name.pem" 2>/dev/null
  rm -f "$out/$name.csr"
  openssl verify -CAfile "$out/ca.pem" "$out/$name.pem" >/dev/null
  echo "listener certificate for $name: $out/$name.pem (key $out/$name-key.pem)"
done
echo "clients: export VAULT_CACERT=$out/ca.pem"
