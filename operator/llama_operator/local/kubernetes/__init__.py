"""The embedded Kubernetes API: kmock's emulator with the server-side behaviour kopf and kubectl
rely on (`server`), and `kubectl get`-style tables from the CRDs' printer columns (`table`)."""
