#!/usr/bin/env bash
# Prepare a SoftHSM2 token for a vaultraft cluster.
#
# Creates ONE token holding the seal's AES-256 key and HMAC key (sensitive, not
# extractable) and packages the token directory so every node gets an identical copy:
# every node of a cluster must be able to decrypt the same stored root key, so they all
# need the same keys. Prints the seal stanza and the environment each node needs.
#
# Run it once, on a trusted provisioning host, then copy the archive to each node.
#
#   deploy/softhsm-init.sh [--dir DIR] [--label LABEL] [--key-label L] [--hmac-key-label L]
#                          [--owner USER] [--archive FILE]
#
# The user PIN and SO PIN come from VAULT_HSM_PIN and SOFTHSM_SO_PIN; when unset, random
# ones are generated and written to DIR/pins.env (mode 0600): move them to your secret
# store. PINs are never printed. Needs: softhsm2 (apt-get install -y softhsm2) and a
# Python with python-pkcs11 (vaultraft's venv has it; set PYTHON=.venv/bin/python).
set -euo pipefail

DIR=/var/lib/vaultraft/softhsm
LABEL=vaultraft
KEY_LABEL=vault-hsm-key
HMAC_LABEL=vault-hsm-hmac
OWNER=""
ARCHIVE=""
PY="${PYTHON:-python3}"

die() { echo "softhsm-init: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --label) LABEL="$2"; shift 2 ;;
    --key-label) KEY_LABEL="$2"; shift 2 ;;
    --hmac-key-label) HMAC_LABEL="$2"; shift 2 ;;
    --owner) OWNER="$2"; shift 2 ;;
    --archive) ARCHIVE="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

command -v softhsm2-util >/dev/null || die "softhsm2-util not found: apt-get install -y softhsm2"
LIB=""
for cand in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
            /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  if [ -f "$cand" ]; then LIB="$cand"; break; fi
done
[ -n "$LIB" ] || die "libsofthsm2.so not found: apt-get install -y softhsm2"
"$PY" -c 'import pkcs11' 2>/dev/null || die "$PY cannot import pkcs11 (set PYTHON=/path/to/vaultraft/.venv/bin/python)"

umask 077
mkdir -p "$DIR/tokens"
chmod 700 "$DIR" "$DIR/tokens"
CONF="$DIR/softhsm2.conf"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$DIR/tokens" > "$CONF"
export SOFTHSM2_CONF="$CONF"

if softhsm2-util --show-slots 2>/dev/null | grep -Eq "Label:[[:space:]]+$LABEL[[:space:]]*$"; then
  die "a token labelled '$LABEL' already exists in $DIR/tokens (refusing to overwrite it)"
fi

PIN="${VAULT_HSM_PIN:-}"
SO_PIN="${SOFTHSM_SO_PIN:-}"
if [ -z "$PIN" ] || [ -z "$SO_PIN" ]; then
  [ -n "$PIN" ] || PIN="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
  [ -n "$SO_PIN" ] || SO_PIN="$("$PY" -c 'import secrets; print(secrets.token_hex(16))')"
  printf 'VAULT_HSM_PIN=%s\nSOFTHSM_SO_PIN=%s\n' "$PIN" "$SO_PIN" > "$DIR/pins.env"
  chmod 600 "$DIR/pins.env"
  echo "softhsm-init: generated PINs written to $DIR/pins.env (mode 0600); move them to your secret store" >&2
fi

softhsm2-util --init-token --free --label "$LABEL" --pin "$PIN" --so-pin "$SO_PIN" >/dev/null

# Generate both keys inside the token; the PIN travels in the environment, not argv.
VR_PIN="$PIN" "$PY" - "$LIB" "$LABEL" "$KEY_LABEL" "$HMAC_LABEL" <<'PY'
import os, sys
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism

lib_path, token_label, key_label, hmac_label = sys.argv[1:5]
token = pkcs11.lib(lib_path).get_token(token_label=token_label)
common = {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}
with token.open(user_pin=os.environ["VR_PIN"], rw=True) as session:
    session.generate_key(KeyType.AES, 256, label=key_label, id=os.urandom(8), store=True,
                         template={**common, Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                                   Attribute.WRAP: True, Attribute.UNWRAP: True})
    session.generate_key(KeyType.GENERIC_SECRET, 256, label=hmac_label, id=os.urandom(8), store=True,
                         mechanism=Mechanism.GENERIC_SECRET_KEY_GEN,
                         template={**common, Attribute.SIGN: True, Attribute.VERIFY: True})
PY

if [ -n "$OWNER" ]; then chown -R "$OWNER" "$DIR"; fi
if [ -n "$ARCHIVE" ]; then
  tar -C "$DIR" -czf "$ARCHIVE" softhsm2.conf tokens
  chmod 600 "$ARCHIVE"
  echo "softhsm-init: token archive for the other nodes: $ARCHIVE (unpack into $DIR on each node)" >&2
fi

cat <<EOF
# Add to every node's configuration:
seal "pkcs11" {
  lib            = "$LIB"
  token_label    = "$LABEL"
  key_label      = "$KEY_LABEL"
  hmac_key_label = "$HMAC_LABEL"
}
# ... and to every node's environment (the PIN from your secret store, not the file):
#   SOFTHSM2_CONF=$CONF
#   VAULT_HSM_PIN=<the user PIN>
EOF
