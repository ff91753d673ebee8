#!/usr/bin/env bash
# Build cost of the `kubernetes` cargo feature: builds `ferry` in release from an EMPTY
# target directory, once per build below, and prints CPU (user + sys of cargo and every
# rustc/cc it ran), wall time, how many crates were compiled, and the binary's size before
# and after `strip`.
#
#   nice -n 19 bench/build-cost.sh           # both builds, default first
#   BUILDS=no-kubernetes bench/build-cost.sh # one of them
#   BUILD_COST_DIR=/path bench/build-cost.sh # where the source copy and target dirs go
#   KEEP=1 bench/build-cost.sh               # keep the target dirs (several GB each)
#
# Builds:
#   default        cargo build --release --locked -p ferry --bin ferry
#   no-kubernetes  the same with --no-default-features --features docker
#                  (no kube-rs, no k8s-openapi, no `ferry export --k8s`)
#
# The source is a copy of the committed HEAD (`git archive`), so a rebase or an edit of the
# checkout while this runs (it takes long on a shared machine) cannot change what is built.
# Dependencies come from cargo's registry cache (~/.cargo/registry), as in any build; only
# compiling is measured. The target dirs are deleted at the end unless KEEP is set: disk is
# shared.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILDS=${BUILDS:-"default no-kubernetes"}
DIR=${BUILD_COST_DIR:-$ROOT/target-buildcost}

for build in $BUILDS; do
    case $build in
        default | no-kubernetes) ;;
        *) echo "build-cost.sh: unknown build '$build' (default, no-kubernetes)" >&2; exit 2 ;;
    esac
done
command -v /usr/bin/time >/dev/null || { echo "build-cost.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 2; }

rm -rf "$DIR"
mkdir -p "$DIR/src"
cleanup() {
    if [[ -n "${KEEP:-}" ]]; then echo "kept $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

commit=$(git -C "$ROOT" rev-parse --short HEAD)
git -C "$ROOT" archive --format=tar HEAD | tar -x -C "$DIR/src"

echo "# ferry $commit, rustc $(rustc --version | cut -d' ' -f2), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at start, nice $(nice)"
echo "| build | CPU (user + sys) | wall | crates compiled | binary | stripped |"
echo "| --- | --- | --- | --- | --- | --- |"
for build in $BUILDS; do
    features=()
    [[ $build == no-kubernetes ]] && features=(--no-default-features --features docker)
    target="$DIR/target-$build"
    rm -rf "$target"
    log="$DIR/$build.log"
    # /usr/bin/time waits for cargo, which waits for every rustc: their rusage is included.
    if ! (cd "$DIR/src" && CARGO_TARGET_DIR="$target" CARGO_INCREMENTAL=0 \
        /usr/bin/time -f 'TIME %U %S %e' -o "$DIR/$build.time" \
        cargo build --release --locked -p ferry --bin ferry "${features[@]}" >"$log" 2>&1); then
        echo "build-cost.sh: the $build build failed; its log:" >&2
        tail -n 30 "$log" >&2
        exit 1
    fi
    read -r _ user sys wall <"$DIR/$build.time"
    crates=$(grep -c '^ *Compiling ' "$log" || true)
    binary="$target/release/ferry"
    strip -o "$DIR/ferry-stripped" "$binary"
    size=$(stat -c %s "$binary")
    stripped=$(stat -c %s "$DIR/ferry-stripped")
    awk -v b="$build" -v u="$user" -v s="$sys" -v w="$wall" -v c="$crates" -v z="$size" -v t="$stripped" 'BEGIN {
        printf "| %s | %.0f s (%.1f + %.1f) | %.1f min | %d | %.1f MB | %.1f MB |\n", b, u + s, u, s, w / 60, c, z / 1e6, t / 1e6
    }'
    rm -f "$DIR/ferry-stripped"
    [[ -n ${KEEP:-} ]] || rm -rf "$target"
done
echo "# load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
