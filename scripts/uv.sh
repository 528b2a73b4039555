# Sourced by the install scripts: a pinned uv from the package registry (never a downloaded
# binary), in its own small venv. Sets UV to its path.
UV_VERSION=0.13.9
UV_HOME=${UV_HOME:-.venv-uv}
if [ ! -x "$UV_HOME/bin/uv" ] || [ "$("$UV_HOME/bin/uv" --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    python3 -m venv --clear "$UV_HOME"
    "$UV_HOME/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
fi
UV="$UV_HOME/bin/uv"
