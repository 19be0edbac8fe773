#!/usr/bin/env bash
# Writes certificates and node configs for deploy/docker/compose.yaml.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
plexus="${PLEXUS:-$here/plexus}"
conf="$here/conf"
mkdir -p "$conf/ca"
[ -f "$conf/ca/ca.pem" ] || "$plexus" certs ca --out "$conf/ca"
token="${PLEXUS_TOKEN:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
for i in 1 2 3; do
  d="$conf/node-$i"
  mkdir -p "$d"
  "$plexus" certs node --ca-dir "$conf/ca" --id "$i" --san "172.28.0.1$i" --san "node$i" --out "$d"
  cat > "$d/node.toml" <<TOML
node_id = $i
listen = "0.0.0.0:7401"
metrics_addr = "0.0.0.0:9464"
data_dir = "/var/lib/plexus"
token = "$token"
[tls]
ca_cert = "/etc/plexus/ca.pem"
node_cert = "/etc/plexus/node-$i.pem"
node_key = "/etc/plexus/node-$i-key.pem"
[[peers]]
id = 1
addr = "172.28.0.11:7401"
[[peers]]
id = 2
addr = "172.28.0.12:7401"
[[peers]]
id = 3
addr = "172.28.0.13:7401"
TOML
done
cat > "$conf/client.toml" <<TOML
seeds = ["172.28.0.11:7401", "172.28.0.12:7401", "172.28.0.13:7401"]
ca_cert = "ca/ca.pem"
token = "$token"
TOML
echo "wrote $conf"
