#!/bin/sh
# Install and start the orch daemon as a systemd user service, and the recovery cron line.
# Usage: scripts/install-service.sh [PATH-TO-ORCH]   (default: the orch on PATH)
set -eu
me=install-service.sh
here=$(cd "$(dirname "$0")" && pwd)

orch=${1:-$(command -v orch || true)}
if [ -z "$orch" ]; then
  echo "$me: orch is not on PATH; install it first (pip install --user . or pipx install .)" \
    "or give its path: $0 /path/to/orch" >&2
  exit 1
fi
case $orch in
  /*) ;;
  *) orch=$(cd "$(dirname "$orch")" && pwd)/$(basename "$orch") ;;
esac
if [ -d "$orch" ] || [ ! -x "$orch" ]; then
  echo "$me: $orch is not an executable file" >&2
  exit 1
fi
# The path goes into the unit and a crontab line unquoted by either: refuse what they
# would read differently (spaces, quotes, %, $, backslashes...).
case $orch in
  *[!A-Za-z0-9/._+@:-]*)
    echo "$me: $orch: a path with spaces or special characters cannot go in the unit;" \
      "link orch from a plain path and give that" >&2
    exit 1 ;;
esac
if ! command -v systemctl >/dev/null 2>&1; then
  echo "$me: systemctl not found: this machine does not run systemd;" \
    "start orch daemon another way" >&2
  exit 1
fi

unit_dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
mkdir -p "$unit_dir" "$HOME/.openclaw/logs"
chmod 700 "$HOME/.openclaw" "$HOME/.openclaw/logs"
sed "s|^ExecStart=.*|ExecStart=$orch daemon|" "$here/orch.service" >"$unit_dir/orch.service"
systemctl --user daemon-reload
systemctl --user enable --now orch.service
echo "$me: installed $unit_dir/orch.service (ExecStart=$orch daemon)"

line=$(grep -v '^#' "$here/orch-recover.cron" | sed "s|\"\$HOME/.local/bin/orch\"|\"$orch\"|")
if ! command -v crontab >/dev/null 2>&1; then
  echo "$me: crontab not found, so no recovery cron line was installed (the daemon" \
    "recovers on its own; cron is the backstop). Add this line to your crontab:" >&2
  echo "$line"
elif crontab -l 2>/dev/null | grep -qxF "$line"; then
  echo "$me: the recovery cron line is already installed"
else
  # Replace an orch recover line from an earlier install (another path) with this one.
  current=$(crontab -l 2>/dev/null || true)
  {
    if [ -n "$current" ]; then printf '%s\n' "$current" | grep -v 'orch" recover' || true; fi
    printf '%s\n' "$line"
  } | crontab -
  echo "$me: installed the recovery cron line: $line"
fi
systemctl --user --no-pager status orch.service | head -n 5
