#!/bin/sh
# probe.sh PATH: the function worker's /healthz or /readyz on the port host-port.sh picked; exit 0
# on 200, non-zero otherwise (an exec probe: the kubelet cannot know a per-pod port).
exec python -c 'import sys, urllib.request
port = open("/tmp/probe-port").read().strip()
urllib.request.urlopen("http://127.0.0.1:%s%s" % (port, sys.argv[1]), timeout=3)' "$1"
