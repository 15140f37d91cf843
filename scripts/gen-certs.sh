#!/usr/bin/env bash
# Generate what a TLS federation with SuperNode authentication needs, into FOLDER:
#   ca.crt, ca.key                  a private certificate authority (keep ca.key offline)
#   superlink.crt, superlink.key    the SuperLink's certificate, signed by the CA, valid for
#                                   localhost, 127.0.0.1, superlink and every extra NAME given
#   nodes/node-I.key, node-I.pub    ECDSA P-384 key pair of SuperNode I (1..NUM_NODES); the node
#                                   keeps .key, the SuperLink's operator registers .pub
#
# Usage: scripts/gen-certs.sh FOLDER [NUM_NODES=2] [NAME ...]
#   e.g. scripts/gen-certs.sh docker/certs 2 superlink.hospital-a.example 10.0.0.5
#
# Existing files are never overwritten (a regenerated CA would invalidate every deployed node);
# delete FOLDER to start over. Private keys are written with mode 600.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 FOLDER [NUM_NODES=2] [SUPERLINK_NAME_OR_IP ...]" >&2
  exit 2
fi
OUT="$1"
NUM_NODES="${2:-2}"
shift $(( $# >= 2 ? 2 : 1 ))
DAYS="${CERT_DAYS:-365}"
umask 077
mkdir -p "$OUT/nodes"

if [ ! -f "$OUT/ca.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -sha384 -nodes -days "$DAYS" \
    -keyout "$OUT/ca.key" -out "$OUT/ca.crt" -subj "/CN=F3OCUS federation CA" 2>/dev/null
fi

if [ ! -f "$OUT/superlink.crt" ]; then
  SAN="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:superlink"
  for name in "$@"; do
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then SAN="$SAN,IP:$name"; else SAN="$SAN,DNS:$name"; fi
  done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -sha384 -nodes -keyout "$OUT/superlink.key" \
    -out "$OUT/superlink.csr" -subj "/CN=superlink" 2>/dev/null
  printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
    "$SAN" > "$OUT/superlink.ext"
  openssl x509 -req -in "$OUT/superlink.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
    -out "$OUT/superlink.crt" -days "$DAYS" -sha384 -extfile "$OUT/superlink.ext" 2>/dev/null
  rm -f "$OUT/superlink.csr" "$OUT/superlink.ext" "$OUT/ca.srl"
fi

for i in $(seq 1 "$NUM_NODES"); do
  if [ ! -f "$OUT/nodes/node-$i.key" ]; then
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "f3ocus-node-$i" -f "$OUT/nodes/node-$i.key"
    mv "$OUT/nodes/node-$i.key.pub" "$OUT/nodes/node-$i.pub"
  fi
done
# Certificates and public keys are public; the container user (uid 49999) must be able to read
# them. Private keys stay 600: give them to that user for Docker (see docs/deployment.md).
chmod 644 "$OUT/ca.crt" "$OUT/superlink.crt" "$OUT"/nodes/*.pub
chmod 755 "$OUT" "$OUT/nodes"
echo "wrote $OUT: ca.crt, superlink.crt/.key (SAN localhost, 127.0.0.1, superlink${*:+, $*}), nodes/node-{1..$NUM_NODES}.key/.pub"
