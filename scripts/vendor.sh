#!/usr/bin/env bash
# Refresh the vendored front-end files in static/vendor/ from the npm registry.
# The product never loads anything from a CDN: it must work on a closed network.
set -euo pipefail
cd "$(dirname "$0")/.."
BOOTSTRAP=5.3.8
BOOTSTRAP_ICONS=1.13.1
HTMX=2.0.7
CHARTJS=4.6.1
XTERM=6.0.0
XTERM_FIT=0.11.0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch() { (cd "$tmp" && npm pack --silent "$1@$2" >/dev/null && mkdir -p "$1" && tar -xzf "$(ls -t ./*.tgz | head -1)" -C "$1" && rm -f ./*.tgz); }
fetch bootstrap "$BOOTSTRAP"
fetch bootstrap-icons "$BOOTSTRAP_ICONS"
fetch htmx.org "$HTMX"
fetch chart.js "$CHARTJS"
fetch @xterm/xterm "$XTERM"
fetch @xterm/addon-fit "$XTERM_FIT"
out=static/vendor
rm -rf "$out" && mkdir -p "$out/bootstrap" "$out/bootstrap-icons/fonts" "$out/htmx" "$out/chartjs" "$out/xterm"
cp "$tmp/bootstrap/package/dist/css/bootstrap.min.css" "$tmp/bootstrap/package/dist/js/bootstrap.bundle.min.js" "$tmp/bootstrap/package/LICENSE" "$out/bootstrap/"
cp "$tmp/bootstrap-icons/package/font/bootstrap-icons.min.css" "$tmp/bootstrap-icons/package/LICENSE" "$out/bootstrap-icons/"
cp "$tmp/bootstrap-icons/package/font/fonts/"* "$out/bootstrap-icons/fonts/"
cp "$tmp/htmx.org/package/dist/htmx.min.js" "$tmp/htmx.org/package/LICENSE" "$out/htmx/"
# The UMD build is already minified; time axes are linear epoch milliseconds (no date adapter).
cp "$tmp/chart.js/package/dist/chart.umd.js" "$tmp/chart.js/package/LICENSE.md" "$out/chartjs/"
# The web terminal: xterm.js (UMD build, global Terminal) and its fit add-on (global FitAddon).
cp "$tmp/@xterm/xterm/package/lib/xterm.js" "$tmp/@xterm/xterm/package/css/xterm.css" "$out/xterm/"
cp "$tmp/@xterm/xterm/package/LICENSE" "$out/xterm/"
cp "$tmp/@xterm/addon-fit/package/lib/addon-fit.js" "$out/xterm/"
# The source maps are not vendored: drop the comments that name them, or `collectstatic`'s
# manifest storage refuses the files that point at missing maps.
find "$out" -name '*.js' -o -name '*.css' | xargs sed -i -E '/^\/[/*]# sourceMappingURL=/d'
cat > "$out/VERSIONS.md" <<TXT
# Vendored front-end files

Refreshed by \`scripts/vendor.sh\` from the npm registry. Each folder keeps its licence. The files
are as published, less their \`sourceMappingURL\` comments (the maps are not vendored).

| package | version | licence |
|---|---|---|
| bootstrap | $BOOTSTRAP | MIT |
| bootstrap-icons | $BOOTSTRAP_ICONS | MIT |
| htmx.org | $HTMX | 0BSD |
| chart.js | $CHARTJS | MIT |
| @xterm/xterm | $XTERM | MIT |
| @xterm/addon-fit | $XTERM_FIT | MIT |
TXT
echo "vendored into $out"
