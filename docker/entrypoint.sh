#!/bin/sh
# Container entry point, SageMaker style: the first argument names the program.
#   docker run IMAGE serve [options]   -> the HTTP server (SageMaker starts serving containers this way)
#   docker run IMAGE train [options]   -> a training run following the /opt/ml contract
#   docker run IMAGE <anything else>   -> exec'd as given (e.g. `python -c ...`, `sh`)
# `exec` replaces this shell, so the program is PID 1 and receives SIGTERM from `docker stop`.
set -e
case "${1:-}" in
  serve|train)
    if ! command -v "$1" >/dev/null 2>&1; then
      echo "error: this image has no '$1' command (serve runs in the binsight serve image, train in the train image)" >&2
      exit 2
    fi
    exec "$@" ;;
  "")
    echo "usage: docker run IMAGE serve|train [options] | COMMAND [ARGS...]" >&2
    exit 2 ;;
  *)
    exec "$@" ;;
esac
