#!/usr/bin/env bash
# Compares `conduit bench transfer` with scp and rsync over a local sshd, on the same
# file size, on this machine. Installs openssh-server and rsync if missing (Debian/Ubuntu,
# needs root). Usage: benches/compare_scp.sh [SIZE_BYTES] [RUNS] (default 1 GiB, 3 runs).
#
# scp and rsync copy from /dev/shm to /dev/shm over ssh to 127.0.0.1 (their default
# ciphers, then aes128-gcm for scp); conduit runs its own bench (direct, files in
# /dev/shm, fsynced, with the STREAM suite a transfer on this machine chooses, which the
# report names). Every figure is the fastest of RUNS runs, as `bench transfer`'s
# are; the time an scp of an empty file takes (ssh's connection and authentication) is
# taken off the scp and rsync times, as conduit's rate leaves out its own handshake.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${1:-1073741824}"
RUNS="${2:-3}"

need() { command -v "$1" >/dev/null 2>&1; }
if ! need sshd && [ ! -x /usr/sbin/sshd ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
fi
need rsync || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; }
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

WORK=$(mktemp -d /dev/shm/conduit-cmp-XXXXXX)
cleanup() { [ -n "${SSHD_PID:-}" ] && kill "$SSHD_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# A private sshd on a free port, key-only, for this user.
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/client_key"
cp "$WORK/client_key.pub" "$WORK/authorized_keys"
PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
mkdir -p /run/sshd
cat > "$WORK/sshd_config" <<CFG
Port $PORT
ListenAddress 127.0.0.1
HostKey $WORK/host_key
AuthorizedKeysFile $WORK/authorized_keys
PasswordAuthentication no
PermitRootLogin prohibit-password
StrictModes no
PidFile $WORK/sshd.pid
Subsystem sftp internal-sftp
CFG
"$SSHD" -f "$WORK/sshd_config" -D -e 2>"$WORK/sshd.log" &
SSHD_PID=$!
sleep 1
SSH_OPTS=(-i "$WORK/client_key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -P "$PORT")

head -c "$SIZE" /dev/urandom > "$WORK/src.bin"
rate() { python3 -c "import sys;print(f'{$SIZE/float(sys.argv[1])/1e6:.0f}')" "$1"; }
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null || return 1; t1=$(date +%s.%N); python3 -c "print($t1-$t0)"; }
# A copy counts only if it succeeded and arrived identical.
check() { cmp -s "$WORK/src.bin" "$1" || { echo "error: $2 failed or copied wrong bytes" >&2; exit 1; }; rm -f "$1"; }
fastest() { python3 -c "import sys;print(min(float(x) for x in sys.argv[1:]))" "$@"; }
RSYNC_SSH="ssh -i $WORK/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -p $PORT"

: > "$WORK/empty"
S=(); A=(); G=(); R=()
for _ in $(seq "$RUNS"); do
    S+=("$(timed scp -q "${SSH_OPTS[@]}" "$WORK/empty" "127.0.0.1:$WORK/empty.out")")
    A+=("$(timed scp -q "${SSH_OPTS[@]}" "$WORK/src.bin" "127.0.0.1:$WORK/scp.bin")") || true
    check "$WORK/scp.bin" scp
    G+=("$(timed scp -q -c aes128-gcm@openssh.com "${SSH_OPTS[@]}" "$WORK/src.bin" "127.0.0.1:$WORK/scp.bin")") || true
    check "$WORK/scp.bin" "scp -c aes128-gcm"
    R+=("$(timed rsync -e "$RSYNC_SSH" "$WORK/src.bin" "127.0.0.1:$WORK/rsync.bin")") || true
    check "$WORK/rsync.bin" rsync
done
T_SETUP=$(fastest "${S[@]}")
minus_setup() { python3 -c "import sys;print(max(float(sys.argv[1])-float(sys.argv[2]),1e-9))" "$1" "$T_SETUP"; }
T_SCP=$(minus_setup "$(fastest "${A[@]}")")
T_SCP_GCM=$(minus_setup "$(fastest "${G[@]}")")
T_RSYNC=$(minus_setup "$(fastest "${R[@]}")")
rm -f "$WORK/src.bin"

cargo build --release --locked -q
CONDUIT=$(./target/release/conduit bench transfer --json --size "$SIZE" --runs "$RUNS")
DIRECT=$(python3 -c "import json,sys;print(f\"{json.loads(sys.argv[1])['direct_mbps']:.0f}\")" "$CONDUIT")
RELAYED=$(python3 -c "import json,sys;print(f\"{json.loads(sys.argv[1])['relayed_mbps']:.0f}\")" "$CONDUIT")
SUITE=$(python3 -c "import json,sys;print(json.loads(sys.argv[1])['suite'])" "$CONDUIT")

printf '%-44s %8s\n' "transfer of $SIZE bytes on loopback, fastest of $RUNS" "MB/s"
printf '%-44s %8s\n' "scp (default cipher)" "$(rate "$T_SCP")"
printf '%-44s %8s\n' "scp -c aes128-gcm" "$(rate "$T_SCP_GCM")"
printf '%-44s %8s\n' "rsync over ssh (default cipher)" "$(rate "$T_RSYNC")"
printf '%-44s %8s\n' "conduit, direct (E2E + QUIC, fsynced)" "$DIRECT"
printf '%-44s %8s\n' "conduit, through a relay" "$RELAYED"
printf '%-44s %8s\n' "(conduit's STREAM suite)" "$SUITE"
printf '%-44s %8s\n' "(ssh setup taken off scp and rsync, seconds)" "$(python3 -c "print(f'{$T_SETUP:.3f}')")"
python3 -c "print(f'conduit direct / scp default: {$DIRECT/($SIZE/$T_SCP/1e6):.2f}')"
python3 -c "print(f'conduit direct / scp aes128-gcm: {$DIRECT/($SIZE/$T_SCP_GCM/1e6):.2f}')"
