#!/bin/sh
# The install steps of deploy/Dockerfile (POSIX sh: python:3.11-slim has no bash guarantees).
#   flywheel-install uv DIR        a venv at DIR holding uv $UV_VERSION
#   flywheel-install export DIR    DIR/<member>.txt: each service's locked, hashed requirements
#   flywheel-install projects DIR  DIR/<service>/{site-packages,bin}: the workspace packages of
#                                  each service, built without their dependencies
#   flywheel-install deps REQS     the venv /opt/flywheel with REQS installed, hash-checked;
#                                  uv is fetched into /tmp for this step and gone after it
# With WHEELHOUSE set (a find-links URL) nothing is fetched from an index.
set -eu
: "${UV_VERSION:?}"
export UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=hardlink
export UV_CACHE_DIR=/tmp/uv-cache
if [ -n "${WHEELHOUSE:-}" ]; then
    source_flags="--no-index --find-links $WHEELHOUSE"
else
    source_flags=""
fi
SERVICES="ingest curator trainer"

install_uv() {
    python3.11 -m venv "$1"
    # shellcheck disable=SC2086 # the flags are words on purpose
    "$1/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check \
        $source_flags "uv==$UV_VERSION"
}

case "$1" in
    uv)
        install_uv "$2"
        ln -s "$2/bin/uv" /usr/local/bin/uv
        # The venv the scripts' shebangs name: /opt/flywheel/bin/python, as in the images.
        uv venv --quiet --python python3.11 /opt/flywheel
        ;;
    export)
        mkdir -p "$2"
        for service in $SERVICES; do
            uv export --frozen --no-dev --no-emit-workspace --no-header \
                --package "flywheel-$service" --output-file "$2/flywheel-$service.txt" >/dev/null
        done
        ;;
    projects)
        for service in $SERVICES; do
            # shellcheck disable=SC2086
            uv pip install --python /opt/flywheel/bin/python $source_flags --no-deps \
                --target "$2/$service/site-packages" libs/common "services/$service"
            mv "$2/$service/site-packages/bin" "$2/$service/bin"
        done
        ;;
    deps)
        install_uv /tmp/uv-tool
        # uv unpacks into its cache and hardlinks into the venv; the cache and uv go with this
        # step, the venv stays.
        /tmp/uv-tool/bin/uv venv --quiet --python python3.11 /opt/flywheel
        # shellcheck disable=SC2086
        /tmp/uv-tool/bin/uv pip install --python /opt/flywheel/bin/python $source_flags \
            --require-hashes --no-deps -r "$2"
        rm -rf /tmp/uv-tool "$UV_CACHE_DIR" "$2" "$0"
        ;;
    *)
        echo "usage: flywheel-install uv DIR | export DIR | projects DIR | deps REQUIREMENTS" >&2
        exit 2
        ;;
esac
