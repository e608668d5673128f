# Sourced by bench/serve/run and bench/serve/check: makes (or reuses) the pinned venv and sets $venv.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${DINO_BENCH_DIR:-$HOME/.cache/dino-bench}/venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[bench/serve] setting up $venv" >&2
  command -v python3 >/dev/null || { echo "bench/serve: python3 is required" >&2; exit 1; }
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req" >&2
  echo "$want" > "$stamp"
fi
export PYTHONDONTWRITEBYTECODE=1
