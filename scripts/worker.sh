#!/bin/sh
# A shell worker: claim from a queue, keep the lease alive, release with the outcome.
# Usage: scripts/worker.sh QUEUE COMMAND...   (COMMAND gets the payload JSON on stdin)
# The token goes to orch in ORCH_TOKEN, never as an argument: `ps` shows arguments
# to every user of the machine.
queue=$1; shift
jget() { python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)['$1']))"; }
while claim=$(orch claim --worker "sh-$$" --queue "$queue" --ttl 30 --wait 5); do
  id=$(printf '%s' "$claim" | jget id)
  token=$(printf '%s' "$claim" | jget token | tr -d '"')
  # Heartbeat every 10 s while the command runs; stop when the lease is lost.
  ( while sleep 10; do ORCH_TOKEN=$token orch heartbeat "$id" >/dev/null || exit; done ) &
  beat=$!
  err=$(mktemp)  # the command's stderr: shown afterwards, its tail kept as the error
  if printf '%s' "$claim" | jget payload | "$@" 2>"$err"; then outcome=succeeded; else outcome=failed; fi
  kill "$beat" 2>/dev/null
  cat "$err" >&2
  error=$(tail -n 20 "$err"); rm -f "$err"
  [ "$outcome" = failed ] || error=
  ORCH_TOKEN=$token orch release "$id" --outcome "$outcome" ${error:+--error "$error"}
done
