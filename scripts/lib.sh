# Shared by scripts/run-node and scripts/test-all: install what building and
# testing need, as root or through sudo, only when it is missing.

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# libclang itself (libclang.so.N or libclang-N.so.N); libclang-cpp, which other
# packages bring, does not serve bindgen (RocksDB's bindings).
ensure_libclang() {
  if ! ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9.]+)?\.so'; then
    echo "== installing libclang-dev (RocksDB's bindings need it)"
    sudo_if_needed apt-get update -qq
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev
  fi
}
