#!/bin/sh
# A toy provisioner for the quickstart: a "workspace" is a directory with a README.
# warmpool runs it with the workspace's state directory as working directory and WARMPOOL_* variables set.
set -eu

workspace="$WARMPOOL_STATE_DIR/workspace"

case "$WARMPOOL_TRANSITION" in
  start)
    echo "building $WARMPOOL_WORKSPACE_NAME (template $WARMPOOL_TEMPLATE/$WARMPOOL_PRESET, owner $WARMPOOL_OWNER)"
    mkdir -p "$workspace"
    sleep 1   # pretend this takes a while
    printf 'cpu=%s image=%s\n' "$WARMPOOL_PARAM_CPU" "$WARMPOOL_PARAM_IMAGE" > "$workspace/README"
    printf '{"path": "%s", "cpu": "%s"}\n' "$workspace" "$WARMPOOL_PARAM_CPU" > "$WARMPOOL_OUTPUTS"
    echo "ready at $workspace"
    ;;
  stop)
    echo "stopping $WARMPOOL_WORKSPACE_NAME"
    ;;
  delete)
    echo "deleting $WARMPOOL_WORKSPACE_NAME"
    rm -rf "$workspace"
    ;;
  *)
    echo "unknown transition $WARMPOOL_TRANSITION" >&2
    exit 1
    ;;
esac
