#!/usr/bin/env bash
# Recreate calibration/speech.ogg: the speech `convert_to_openvino.py --int8` calibrates on.
# Several espeak-ng voices (male, female, accents) at three speaking rates, 16 kHz mono Ogg Vorbis.
# Needs espeak-ng and ffmpeg (apt-get install espeak-ng ffmpeg); only for remaking the file.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
lines=(
  "The quick brown fox jumps over the lazy dog."
  "Please call Stella and bring these things."
  "Good morning! How can I help you today?"
  "Seven big whales swam past the old harbour."
)
voices=(en-us en-gb en-us+f3 en-029 en+f2 de)
rates=(130 175 230)
i=0
for v in "${voices[@]}"; do
  for r in "${rates[@]}"; do
    espeak-ng -v "$v" -s "$r" -w "$tmp/$(printf %03d $i).wav" "${lines[$((i % ${#lines[@]}))]}"
    i=$((i + 1))
  done
done
ls "$tmp"/*.wav | sed "s/^/file '/; s/$/'/" > "$tmp/list.txt"
ffmpeg -loglevel error -y -f concat -safe 0 -i "$tmp/list.txt" -ar 16000 -ac 1 -c:a libvorbis -q:a 0 speech.ogg
echo "wrote $(pwd)/speech.ogg"
