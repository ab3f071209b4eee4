#!/usr/bin/env bash
# Proves the README's set-up on a fresh machine: builds a minimal Debian 12 root from Debian's
# packages (mmdebstrap, minbase: no compiler, no library of ours), copies the committed tree into
# it and runs the README's two set-up commands there as written (no nvcc inside: a CPU build):
# the first, whose image is checked, then the test command. Needs root (chroot) and Debian's
# package mirror.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if ! command -v mmdebstrap >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

# The README's set-up commands: the lines after its "# build, then generate" and "# build and run
# the tests" comments.
cmd=$(awk '/^# build, then generate/ { getline; print; exit }' README.md)
test_cmd=$(awk '/^# build and run the tests/ { getline; print; exit }' README.md)
[ -n "$cmd" ] && [ -n "$test_cmd" ] || { echo "fresh-root: the set-up commands were not found in README.md" >&2; exit 1; }
out=$(sed -E 's/.* -o ([^ ]+).*/\1/' <<<"$cmd")

root=$(mktemp -d /tmp/qdit-fresh-root.XXXXXX)
cleanup() {
  for m in proc dev; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT

echo "fresh-root: building a minimal Debian 12 root"
mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
  --include=ca-certificates bookworm "$root"
cp /etc/resolv.conf "$root/etc/resolv.conf"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mkdir -p "$root/src/qdit"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$root/src/qdit"

echo "fresh-root: $cmd"
start=$(date +%s)
chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  bash -c "set -euo pipefail; cd /src/qdit; $cmd"
test -s "$root/src/qdit/$out" || { echo "fresh-root: the command wrote no $out" >&2; exit 1; }
head -c 8 "$root/src/qdit/$out" | od -An -tx1 | grep -q '89 50 4e 47 0d 0a 1a 0a' ||
  { echo "fresh-root: $out is not a PNG" >&2; exit 1; }
echo "fresh-root: README's first command passed on a fresh Debian 12 root in $(( $(date +%s) - start )) s"
echo "fresh-root: $test_cmd"
start=$(date +%s)
chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  bash -c "set -euo pipefail; cd /src/qdit; $test_cmd"
echo "fresh-root: README's test command passed on the same root in $(( $(date +%s) - start )) s"
