#!/usr/bin/env bash
# Makes a root CA and an intermediate CA with openssl and writes the two Secrets the provided
# mesh (provided-ca/mesh.yaml) references:
#   provided-ca-cert: the intermediate certificate followed by the root, PEM
#   provided-ca-key:  the intermediate's private key, PEM
# Usage: make-ca.sh OUT_DIR [MESH]
#   then, the mesh existing (without mTLS at first):
#     kumactl apply -f OUT_DIR/secrets.yaml
#     kumactl apply -f provided-ca/mesh.yaml
# The root key stays in OUT_DIR: keep it offline in real deployments.
set -euo pipefail
out=${1:?usage: make-ca.sh OUT_DIR [MESH]}
mesh=${2:-default}
mkdir -p "$out"
cd "$out"
umask 077

cat > ca.ext <<'EXT'
[intermediate]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT

openssl req -x509 -newkey rsa:2048 -noenc -keyout root.key -out root.crt -days 3650 \
  -subj "/O=Example/CN=Example Root CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  2>/dev/null
openssl req -new -newkey rsa:2048 -noenc -keyout intermediate.key -out intermediate.csr \
  -subj "/O=Example/CN=Example Mesh Intermediate CA" 2>/dev/null
openssl x509 -req -in intermediate.csr -CA root.crt -CAkey root.key -CAcreateserial \
  -out intermediate.crt -days 1825 -extfile ca.ext -extensions intermediate 2>/dev/null
cat intermediate.crt root.crt > chain.pem

b64() { base64 -w0 < "$1"; }
cat > secrets.yaml <<YAML
type: Secret
mesh: $mesh
name: provided-ca-cert
data: $(b64 chain.pem)
---
type: Secret
mesh: $mesh
name: provided-ca-key
data: $(b64 intermediate.key)
YAML
rm -f intermediate.csr ca.ext root.srl
echo "wrote $out/secrets.yaml (intermediate + root, intermediate key)"
