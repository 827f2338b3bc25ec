"""istioctl-style inspection of a running mesh: `proxy-config secret`, `status`, `check`.

Everything is read over wire APIs (a sidecar's admin `/certs` inside its pod, its health port, the
control plane's TLS port); `secrets` and `checks` are pure functions of what was read and `now`.
"""
