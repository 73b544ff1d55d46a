# Sourced (`. tools/gpu/env.sh`) on the GPU machine from the repository root: unpacks
# .gpu/bundle.tar.xz (tools/gpu/prepare) and sets the paths that .gpu/bin/diffrl, its
# Lua modules and the specs need. See tools/gpu/README.md.
root=$PWD
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
# The build's compiled-in source dir: make it resolve here too.
if [ ! -e /work/main ]; then mkdir -p /work && ln -s "$root" /work/main; fi

[ -d .gpu/lib ] || tar -C .gpu -xJf .gpu/bundle.tar.xz || return 1
libdirs="$root/.gpu/lib"
for lib in $(LD_LIBRARY_PATH=$libdirs ldd .gpu/bin/diffrl .gpu/lib/libdiffrl.so.0 | awk '/not found/ {print $1}' | sort -u); do
  found=$(find /usr /opt /lib -name "$lib" 2>/dev/null | head -1)
  if [ -n "$found" ]; then libdirs="$libdirs:$(dirname "$found")"; else echo "env.sh: $lib not found on this machine"; fi
done
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
lua=$root/.gpu/lua
export LUA_PATH="$lua/share/?.lua;$lua/share/?/init.lua;;"
export LUA_CPATH="$lua/lib/?.so;;"
export DIFFRL_SOURCE_DIR=$root DIFFRL_BIN=$root/.gpu/bin/diffrl

