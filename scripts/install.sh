# Sourced by the setup scripts: `install_locked VENV LOCK` makes VENV hold exactly what the lock
# file pins (requirements/*.txt, refreshed by scripts/lock.sh), plus this project (editable,
# no dependencies of its own: the lock has them all).
#
# The locks that hold torch pin its CPU build (torch==...+cpu): it comes from the wheel folder
# $PIP_FIND_LINKS (/opt/wheels) where there is one, else from the PyTorch CPU index.
source "$(dirname "${BASH_SOURCE[0]}")/uv.sh"

install_locked() {
    local venv=$1 lock=$2
    local uv=("$UV" pip --quiet)
    local where=(--python "$venv/bin/python")
    local wheels=${PIP_FIND_LINKS:-/opt/wheels}
    if grep -q '^torch==.*+cpu' "$lock"; then
        if [ -d "$wheels" ]; then
            where+=(--find-links "$wheels")
        else
            where+=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
        fi
    fi
    python3 -m venv --clear "$venv"
    "${uv[@]}" sync "${where[@]}" "$lock"
    "${uv[@]}" install "${where[@]}" --no-deps -e .
}
