"""The embedded Kubernetes API, for the no-cluster default: kmock's emulator with the server-side
behaviour kopf and kubectl rely on (`emulator`, with the object rules in `objects` and what it
serves in `resources`), served from a thread by `server.EmbeddedKubernetes`, and `kubectl get`-style
tables from the CRDs' printer columns (`table`)."""
