#!/bin/sh
# A task an agent might run. Under `taskbox run` (profile explore) the
# workspace is writable, everything else is not, and the network is gone.
echo "inside: uid $(id -u), host $(hostname), $(ls /proc | grep -c '^[0-9]') processes visible"
echo "written by the task" > result.txt && echo "workspace write: ok"
cat "$HOME/.ssh/id_rsa" >/dev/null 2>&1 && echo "ssh key: READ (bad)" || echo "ssh key: refused"
touch /etc/taskbox-demo 2>/dev/null && echo "/etc write: DONE (bad)" || echo "/etc write: refused"
curl -sS --max-time 3 https://crates.io >/dev/null 2>&1 && echo "network: OPEN (bad)" || echo "network: refused"
