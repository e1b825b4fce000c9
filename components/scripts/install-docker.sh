#!/usr/bin/env bash
# Turns a fresh Debian LXC container into a Docker host, using Debian's own docker.io
# package. Runs over SSH right after the container's first boot, and again whenever this
# file changes: every step converges, so a second run on a finished host changes nothing.
set -euo pipefail

readonly NETWORK_TIMEOUT_SECONDS=120
readonly MIRROR_TIMEOUT_SECONDS=300
readonly DOCKER_TIMEOUT_SECONDS=90
# Debian's apt-daily timers may hold the dpkg lock on a first boot; wait for it, do not fail.
readonly APT_OPTIONS=(-q -o DPkg::Lock::Timeout=300)

export DEBIAN_FRONTEND=noninteractive

log() {
  printf 'install-docker: %s\n' "$*"
}

# wait_for SECONDS WHAT COMMAND...: retries COMMAND every 3s until it succeeds.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "gave up after ${seconds}s waiting for ${what}"
      return 1
    fi
    sleep 3
  done
}

has_default_route() {
  local routes
  routes=$(ip -4 route show default)
  [[ -n "${routes}" ]]
}

# Without Error-Mode=any, apt-get update exits 0 when a mirror cannot be reached.
refresh_package_lists() {
  apt-get "${APT_OPTIONS[@]}" -o APT::Update::Error-Mode=any update
}

main() {
  # "degraded" is normal in an unprivileged container; only the wait matters here.
  timeout "${NETWORK_TIMEOUT_SECONDS}" systemctl is-system-running --wait >/dev/null || true

  log "waiting for the default route"
  wait_for "${NETWORK_TIMEOUT_SECONDS}" "a default IPv4 route" has_default_route

  log "waiting for the package mirrors (DNS and outbound HTTP)"
  wait_for "${MIRROR_TIMEOUT_SECONDS}" "apt-get update to succeed" refresh_package_lists

  log "installing docker.io"
  apt-get "${APT_OPTIONS[@]}" install -y --no-install-recommends ca-certificates docker.io

  systemctl enable --now containerd.service docker.service

  log "waiting for the Docker daemon"
  wait_for "${DOCKER_TIMEOUT_SECONDS}" "docker info to answer" docker info

  local version
  version=$(docker version --format '{{.Server.Version}}')
  log "ready: Docker ${version}"
}

# The script arrives on stdin (bash -s): bash reads the whole function before running it,
# and main's stdin is /dev/null, so no command inside can swallow the rest or wait on it.
main "$@" </dev/null
