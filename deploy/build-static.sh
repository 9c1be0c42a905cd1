#!/usr/bin/env bash
# Builds hound as a static musl binary and checks it: no dynamic loader or shared libraries, it
# runs, and against a real etcd (on free loopback ports, in a temporary folder) it becomes healthy
# and stops cleanly on SIGTERM. Prints the binary's path and size.
#
# Needs: the Rust target (`rustup target add x86_64-unknown-linux-musl`), musl-gcc (Debian's
# musl-tools) for ring's C code, readelf (binutils), python3 (to pick free ports), and etcd on
# PATH or in HOUND_TEST_ETCD. Honours CARGO_TARGET_DIR. `--no-etcd` skips the etcd check.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
with_etcd=1
[ "${1:-}" = "--no-etcd" ] && with_etcd=0

cargo build --release --locked --target "$target"
bin="${CARGO_TARGET_DIR:-target}/$target/release/hound"

fail() { echo "build-static: $*" >&2; exit 1; }

# Static: no program interpreter, no NEEDED libraries. (Outputs captured first: under pipefail,
# `readelf | grep -q` can fail on SIGPIPE exactly when grep finds something.)
program_headers=$(readelf -lW "$bin")
dynamic_section=$(readelf -dW "$bin")
if grep -q 'program interpreter' <<<"$program_headers"; then
    fail "$bin asks for a dynamic loader"
fi
if grep -q '(NEEDED)' <<<"$dynamic_section"; then
    fail "$bin needs shared libraries: $(grep '(NEEDED)' <<<"$dynamic_section")"
fi
version=$("$bin" --version)
echo "build-static: $bin is static, $(stat -c %s "$bin") bytes, prints: $version"

[ "$with_etcd" = 1 ] || exit 0

etcd_bin="${HOUND_TEST_ETCD:-etcd}"
command -v "$etcd_bin" >/dev/null || fail "no etcd (set HOUND_TEST_ETCD or put etcd on PATH)"

work=$(mktemp -d)
etcd_pid=""
hound_pid=""
cleanup() {
    for pid in $hound_pid $etcd_pid; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

dump_logs() {
    echo "--- etcd log (tail)" >&2; tail -20 "$work/etcd.log" >&2 || true
    echo "--- hound log" >&2; cat "$work/hound.log" >&2 || true
}

read -r client_port peer_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
client="http://127.0.0.1:$client_port"
peer="http://127.0.0.1:$peer_port"
"$etcd_bin" --name static-check --data-dir "$work/etcd" \
    --listen-client-urls "$client" --advertise-client-urls "$client" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
    --initial-cluster "static-check=$peer" >"$work/etcd.log" 2>&1 &
etcd_pid=$!

"$bin" -b 127.0.0.1 -p 0 --etcd "$client" 2>"$work/hound.log" &
hound_pid=$!

# `listening on http://127.0.0.1:PORT (...)` gives the port hound picked.
port=""
for _ in $(seq 100); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\) .*|\1|p' "$work/hound.log")
    [ -n "$port" ] && break
    kill -0 "$hound_pid" 2>/dev/null || { dump_logs; fail "hound exited before listening"; }
    sleep 0.1
done
[ -n "$port" ] || { dump_logs; fail "hound did not log its address within 10 s"; }

# One GET over bash's /dev/tcp (no curl needed); prints the whole response.
http_get() {
    local response
    exec 3<>"/dev/tcp/127.0.0.1/$port"
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" "$port" >&3
    response=$(timeout 5 cat <&3 || true)
    exec 3<&-
    printf '%s' "$response"
}

healthy=""
for _ in $(seq 60); do
    response=$(http_get /healthz || true)
    if [[ "$response" == "HTTP/1.1 200"* ]]; then
        healthy=1
        break
    fi
    sleep 0.5
done
[ -n "$healthy" ] || { echo "last /healthz answer: $response" >&2; dump_logs; fail "/healthz was not 200 within 30 s"; }
echo "build-static: GET /healthz -> ${response##*$'\r\n\r\n'}"
etcd_version=$(http_get /etcd/version)
echo "build-static: GET /etcd/version -> ${etcd_version##*$'\r\n\r\n'}"

started=$(date +%s%N)
kill -TERM "$hound_pid"
status=0
wait "$hound_pid" || status=$?
hound_pid=""
elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
[ "$status" = 0 ] || { dump_logs; fail "hound exited $status on SIGTERM"; }
echo "build-static: SIGTERM -> exit 0 in $elapsed_ms ms"
