"""The sidecar injector (Istio's pkg/kube/inject): what a Pod gets so that it joins the mesh.

Pure cores: `selection` (does this Pod get a sidecar), `template` (the Pod with its init container,
sidecar and socket volume), `probes` (the app's HTTP probes through the sidecar), `jsonpatch` (the
RFC 6902 patch between two Pods), `workloads` (`kube-inject` over Pods, Deployments, ... in YAML);
shells: `webhook` (the admission webhook the control plane serves) and `cli` (`meshward
kube-inject`). It imports no other component: the control plane imports it to serve the webhook.
"""
