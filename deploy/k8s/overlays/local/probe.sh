#!/bin/bash
# probe.sh PATH: the function worker's /healthz or /readyz on the port host-port.sh picked; exit 0
# on 200, 1 otherwise. An exec probe (the kubelet cannot know a per-pod port), in bash with its
# /dev/tcp rather than Python: the probe's CPU counts against the container's limit, and a Python
# start (~150 ms of CPU) under a small limit that the worker already uses up took longer than the
# probe's timeout.
port=$(cat /tmp/probe-port) || exit 1
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$1" >&3
read -r -t 8 _ status _ <&3 || exit 1
[[ $status == 200 ]]
