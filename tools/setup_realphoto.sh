#!/usr/bin/env bash
# Put the photographs of the real-photograph relational benchmark (benchmarks/realphoto/) in
# place: Debian packages that ship real photographs, at the paths the label files name.
# Light packages are installed; packages whose dependencies are heavy (kphotoalbum pulls
# hundreds) are downloaded and only their picture folders unpacked, at their install paths.
# Needs root (or prints what to install). `relsearch bench realphoto` reports any photo
# that is missing or differs from its recorded sha256.
#
# --train-extra also puts the photographs of labels_train_extra.jsonl and labels_train_extra2.jsonl
# in place (training only, about 1 GB of downloads): each package is downloaded and only its labelled files unpacked;
# gcompris-qt-data's photographs live in Qt resource bundles, unpacked by tools/unpack_rcc.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
extra=0
case "${1:-}" in
  "") ;;
  --train-extra) extra=1 ;;
  *) echo "setup_realphoto: unknown option $1 (the only one is --train-extra)" >&2; exit 2 ;;
esac

install=(
  endless-sky-data lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 lxqt-themes mypaint-data-extras
  scratch cimg-doc hugin-data labelme-examples gnome-control-center-data palapeli-data
  golang-github-rwcarlsen-goexif-dev kalzium-data
  # train split (also installed by tools/setup.sh)
  mate-backgrounds plasma-workspace-wallpapers tuxpaint-data opencv-doc
)
# package  folder(s) to unpack
unpack=(
  "kphotoalbum ./usr/share/kphotoalbum/demo"
  "nip2 ./usr/share/doc/nip2/examples"
  "forensics-samples-files ./usr/share/forensics-samples/original-files"
  "krank ./usr/share/games/krank/levels/unera-backgrounds"
  "liblemonldap-ng-portal-perl ./usr/share/lemonldap-ng/portal/htdocs/static/common/backgrounds"
  "libsixel-examples ./usr/share/doc/libsixel-examples/examples/images"
  "lifeograph ./usr/share/net.sourceforge.Lifeograph/backgrounds"
  "mate-screensaver-common ./usr/share/backgrounds/cosmos"
  "python3-skimage ./usr/lib/python3/dist-packages/skimage/data"
  "python3-sklearn ./usr/lib/python3/dist-packages/sklearn/datasets/images"
  "tagua-data ./usr/share/tagua/themes/wallpapers"
  "libdlib19.1 ./usr/share/doc/libdlib19.1/examples"
  "moon-lander-data ./usr/share/games/moon-lander/images/backgrounds"
  "zoph ./usr/share/zoph/www/php/templates/default/images/backgrounds"
  "manuskript ./usr/share/manuskript/resources/backgrounds"
  "gmerlin-data ./usr/share/gmerlin/web/wallpapers"
  "psychtoolbox-3-common ./usr/share/psychtoolbox-3/PsychDemos"
  "tuxtype-data ./usr/share/tuxtype/images/backgrounds"
)

if [ "$(id -u)" != 0 ]; then
  echo "setup_realphoto: run as root, or install: ${install[*]}; and unpack the folders listed in $0" >&2
  exit 1
fi
need=()
for pkg in "${install[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup_realphoto: installing ${#need[@]} packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
work=$(mktemp -d)
chown _apt "$work" 2>/dev/null || true  # apt-get download writes as _apt where it can
trap 'rm -rf "$work"' EXIT
for entry in "${unpack[@]}"; do
  read -r pkg folders <<<"$entry"
  first=${folders%% *}
  if [ -e "/${first#./}" ]; then continue; fi
  echo "setup_realphoto: unpacking the pictures of $pkg"
  (cd "$work" && apt-get download -qq "$pkg" >/dev/null)
  # shellcheck disable=SC2086
  dpkg-deb --fsys-tarfile "$work"/"${pkg}"_*.deb | tar -x -C / $folders
  rm -f "$work"/"${pkg}"_*.deb
done
if [ "$extra" = 1 ]; then
  labels=("$here/../benchmarks/realphoto/labels_train_extra.jsonl" "$here/../benchmarks/realphoto/labels_train_extra2.jsonl")
  rcc_out=/usr/share/gcompris-qt/rcc-unpacked
  for pkg in $(python3 -c 'import json, sys; print(" ".join(sorted({json.loads(l)["package"] for f in sys.argv[1:] for l in open(f)})))' "${labels[@]}"); do
    # the package's labelled files, as tar members (./usr/...), that are not there yet
    members=$(python3 - "$pkg" "$rcc_out" "${labels[@]}" <<'PY'
import json, os, sys
pkg, rcc, *files = sys.argv[1:]
for labels in files:
    for line in open(labels):
        row = json.loads(line)
        if row["package"] == pkg and not row["path"].startswith(rcc + "/") and not os.path.exists(row["path"]):
            print("." + row["path"])
PY
)
    if [ "$pkg" = gcompris-qt-data ] && [ -d "$rcc_out" ]; then continue; fi
    if [ "$pkg" != gcompris-qt-data ] && [ -z "$members" ]; then continue; fi
    echo "setup_realphoto: unpacking the labelled pictures of $pkg"
    (cd "$work" && apt-get download -qq "$pkg" >/dev/null)
    if [ "$pkg" = gcompris-qt-data ]; then
      mkdir -p "$work/gcompris"
      dpkg-deb --fsys-tarfile "$work"/"${pkg}"_*.deb | tar -x -C "$work/gcompris" ./usr/share/gcompris-qt/rcc
      python3 "$here/unpack_rcc.py" "$rcc_out" "$work"/gcompris/usr/share/gcompris-qt/rcc/*.rcc >/dev/null
    else
      # shellcheck disable=SC2086
      dpkg-deb --fsys-tarfile "$work"/"${pkg}"_*.deb | tar -x -C / $members
    fi
    rm -rf "$work"/"${pkg}"_*.deb "$work/gcompris"
  done
fi
echo "setup_realphoto: done"
