#!/bin/sh
# Install and start the orch daemon as a systemd user service, and the recovery cron line.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
unit_dir="${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
mkdir -p "$unit_dir" "$HOME/.openclaw/logs"
chmod 700 "$HOME/.openclaw" "$HOME/.openclaw/logs"
cp "$here/orch.service" "$unit_dir/orch.service"
systemctl --user daemon-reload
systemctl --user enable --now orch.service
if ! crontab -l 2>/dev/null | grep -q 'orch" recover'; then
  (crontab -l 2>/dev/null; grep -v '^#' "$here/orch-recover.cron") | crontab -
fi
systemctl --user --no-pager status orch.service | head -n 5
