#!/usr/bin/env bash
# Set up relsearch on a fresh machine: Debian packages (clip art for the example and the
# relational corpus, wallpaper photographs and emoji art for its scenes and benchmark sets,
# Chromium for the HTML view tests) and a .venv at the repository root (reused when present)
# with relsearch and every extra ('full': torch, train, relsim, clip, dino, ray, milvus, bench,
# export; and 'dev', the test tools), so the whole test suite, torch paths included, runs; at the
# exact versions of constraints.txt. Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "setup: $*"; }  # one line per step: the slow ones take minutes

# Debian packages, and why.
apt_packages=(
  openclipart-png          # clip art: example collection, relational corpus
  chromium                 # tests/test_view.py renders the page in headless Chromium
  fonts-noto-color-emoji   # unseen emoji art for the relational benchmark sets
  gnome-backgrounds        # wallpaper photographs: backgrounds of training scenes
  mate-backgrounds
  ukui-wallpapers
  plasma-workspace-wallpapers
  tuxpaint-data            # real photographs of things and places (its templates), for training scenes
  opencv-doc               # likewise (its sample photographs: a room, fruit, a table of things)
  tuxpaint-stamps-default  # cut-out photographs of things, stood in training photographs (compose --things)
  lomiri-wallpapers        # evaluation-only backgrounds (tests/test_relsim_mini.py)
)
need_apt=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing ${#need_apt[@]} Debian package(s) with apt-get (a few minutes): ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: please install with your package manager: ${need_apt[*]}" >&2
  fi
else
  say "Debian packages: all ${#apt_packages[@]} present"
fi

[ -x .venv/bin/python ] || { say "creating .venv"; python3 -m venv .venv; }
stamp=.venv/.relsearch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  say "installing relsearch and its extras into .venv with pip (several minutes the first time)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[full,dev]"
  touch "$stamp"
else
  say ".venv is up to date"
fi
say "done: .venv/bin/relsearch --help"
