"""istio-init's job, run once per pod before its app and sidecar start: the iptables nat rules
that steer the pod's TCP through its sidecar (`iptables`)."""
