// Package node tests the operator on a real single-node Kubernetes: the cluster hack/node builds
// from Go modules and Debian packages (kube-apiserver, controller-manager, scheduler, kubelet,
// kube-proxy, etcd, CoreDNS, containerd, runc, a bridge CNI), the operator installed with its
// Helm chart from images built from this checkout, and a RedPacketSet whose pods the kubelet
// runs and reports Ready.
//
// It needs root and a Linux host that can run a kubelet (see hack/node/up.sh's preflight). On a
// machine that cannot, it fails with the reason; it never skips. The cluster is built (cached
// under ~/.cache/redpacketset/node) and brought up once for the package, and torn down at the
// end with the host restored; -node.keep leaves it running for a post-mortem.
package node
