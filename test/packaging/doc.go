// Package packaging tests how the operator is shipped: the kustomize install in
// config/default and the Helm chart in charts/redpacket-operator. The tests render both (Helm's
// template engine and kustomize's krusty, as libraries, so no binary is downloaded) and apply
// the output with server-side apply to a real kube-apiserver (envtest), then check the objects
// and that the operator's ServiceAccount is really granted what the controllers need.
//
// It owns no production code and must never depend on a cluster other than the envtest one it
// starts, nor on the Helm or kustomize CLIs being installed.
package packaging
