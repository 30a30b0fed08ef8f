#!/usr/bin/env bash
# The plots a user sees, drawn by this checkout and by an older commit, side by side (issue 14's before/after).
#
#   bash benchmarks/plot_gallery.sh [BEFORE_COMMIT] [OUT_DIR]
#
# Draws, with each version: the bbc-news demo's curves.png and mistakes.png (seed 0, features from the cache,
# featurised on the first run), a two-bar `sweep --plot`, and `budgetsft plot` of an llf and a first run.
# Writes OUT_DIR/{before,after}/.
# The default BEFORE_COMMIT is the last one before the plot fixes. Needs git and the project's .venv.
set -euo pipefail
before=${1:-fafd24e^}
out=${2:-benchmarks/figures/plots}
root=$(git rev-parse --show-toplevel)
py="$root/.venv/bin/python"
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/before" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$root" worktree add --detach "$tmp/before" "$before" >/dev/null 2>&1

draw() {  # draw SRC_DIR DEST_DIR
    local src=$1 dest=$2
    mkdir -p "$dest"
    export PYTHONPATH="$src/src"
    "$py" -m budgetsft demo --seeds 0 --out "$tmp/work/demo" >/dev/null
    cp "$tmp/work/demo/curves.png" "$dest/demo_curves.png"
    cp "$tmp/work/demo/mistakes.png" "$dest/demo_mistakes.png"
    for gate in llf first; do
        "$py" -m budgetsft run --gate "$gate" --beta 0.1 --rounds 3000 --seed 0 --out "$tmp/work/runs/$gate" >/dev/null
    done
    "$py" -m budgetsft sweep --gates llf,first --seeds 0,1 --rounds 1000 --learner ridge --radius 2 \
        --plot "$dest/sweep_two_bars.png" >/dev/null
    "$py" -m budgetsft plot "$tmp/work/runs/llf/records.csv" "$tmp/work/runs/first/records.csv" --out "$dest/plot_llf_first.png" >/dev/null
    rm -rf "$tmp/work"
}

mkdir -p "$out"
out=$(cd "$out" && pwd)
echo "before: $(git -C "$root" rev-parse --short "$before")"
draw "$tmp/before" "$out/before"
echo "after: $(git -C "$root" rev-parse --short HEAD) + working tree"
draw "$root" "$out/after"
ls -1 "$out"/before "$out"/after
