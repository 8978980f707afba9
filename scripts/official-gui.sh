#!/usr/bin/env bash
# Build ArmoniK's official Admin GUI (aneoconsulting/ArmoniK.Admin.GUI) from a checkout of its
# repository, the way its Dockerfile does, for `pyarmonik control|local --official-gui DIR`.
#
#   git clone https://github.com/aneoconsulting/ArmoniK.Admin.GUI SRC_DIR
#   bash scripts/official-gui.sh SRC_DIR
#   pyarmonik local --official-gui SRC_DIR/dist/admin/browser     # http://127.0.0.1:5002/admin/
#
# Needs node (20 or newer) and the npm registry; pnpm is fetched at the version pinned by the
# GUI's `packageManager` field. The only change to the GUI's own build: font inlining is
# turned off for this build (angular.json is restored afterwards), because it downloads
# Google's fonts at build time and fails without internet; the browser then loads them itself
# (or falls back to its own fonts offline).
set -euo pipefail
src=${1:?usage: scripts/official-gui.sh SRC_DIR (a checkout of aneoconsulting/ArmoniK.Admin.GUI)}
cd "$src"
[ -f angular.json ] && [ -f pnpm-lock.yaml ] || { echo "$src is not a checkout of ArmoniK.Admin.GUI" >&2; exit 1; }

# "pnpm@10.12.1" or "pnpm@10.12.1+sha512.…": the version alone.
pnpm_version=$(node -p 'require("./package.json").packageManager.split("@")[1].split("+")[0]')
tool_dir=${PNPM_TOOL_DIR:-$HOME/.cache/pyarmonik/pnpm-$pnpm_version}
if [ ! -x "$tool_dir/node_modules/.bin/pnpm" ]; then
    npm install --silent --prefix "$tool_dir" "pnpm@$pnpm_version"
fi
export PATH="$tool_dir/node_modules/.bin:$PATH" NG_CLI_ANALYTICS=false

pnpm install --frozen-lockfile

cp angular.json angular.json.pyarmonik-backup
trap 'mv -f angular.json.pyarmonik-backup angular.json' EXIT
node -e '
const fs = require("fs");
const config = JSON.parse(fs.readFileSync("angular.json", "utf8"));
for (const project of Object.values(config.projects)) {
  const production = project.architect.build.configurations.production;
  production.optimization = { scripts: true, styles: true, fonts: false };
}
fs.writeFileSync("angular.json", JSON.stringify(config, null, 2));
'
nice -n 10 pnpm build --base-href=/admin/

out="$PWD/dist/admin/browser"
[ -f "$out/en/index.html" ] && [ -f "$out/fr/index.html" ] || { echo "no build in $out" >&2; exit 1; }
echo "$out"
