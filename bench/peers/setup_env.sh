# Sourced by the peers' run scripts on the GPU machine, with O (log folder), WHEELS, QDIT_BIN and
# QDIT_LIBS set: installs the carried wheels under /tmp/peers-site, unpacks the libraries qdit's
# binary links (libdnnl.so.2, libOpenCL.so.1; .gz or plain) into /tmp/peers-lib, sets PYTHONPATH and
# LD_LIBRARY_PATH, and writes the machine's description to $O/env.txt.
mkdir -p "$O"
export PYTHONUNBUFFERED=1
if [ -d "$WHEELS" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/peers-site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/peers-site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p /tmp/peers-lib
for f in "$QDIT_LIBS"/*.gz; do [ -f "$f" ] && gunzip -c "$f" > "/tmp/peers-lib/$(basename "$f" .gz)"; done
for f in libdnnl.so.2 libOpenCL.so.1; do [ -f "$QDIT_LIBS/$f" ] && cp "$QDIT_LIBS/$f" /tmp/peers-lib/; done
export LD_LIBRARY_PATH=/tmp/peers-lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
  nvcc --version | tail -2; date -u; ldd "$QDIT_BIN" | grep -i "not found"; } > "$O/env.txt" 2>&1
cat "$O/env.txt"
