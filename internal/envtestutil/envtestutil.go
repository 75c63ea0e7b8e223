// Package envtestutil starts a real kube-apiserver and etcd for tests (controller-runtime's
// envtest) with this repository's CRDs installed. The binaries are built from Go modules by
// hack/build-envtest.sh, because setup-envtest's download host is unreachable here; when
// KUBEBUILDER_ASSETS is unset the script is run to find (or build) them.
package envtestutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/serializer"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

// Env is a running control plane and a client for it.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *k8sruntime.Scheme
	env    *envtest.Environment
}

// RepoRoot is the repository's top directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Scheme knows the built-in types and this project's API.
func Scheme() *k8sruntime.Scheme {
	s := k8sruntime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := rpv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// Codecs decodes objects of Scheme.
func Codecs() serializer.CodecFactory { return serializer.NewCodecFactory(Scheme()) }

// Assets is the directory holding kube-apiserver and etcd, built if need be.
func Assets(tb testing.TB) string {
	tb.Helper()
	if dir := os.Getenv("KUBEBUILDER_ASSETS"); dir != "" {
		return dir
	}
	cmd := exec.Command("bash", filepath.Join(RepoRoot(), "hack", "build-envtest.sh"))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		tb.Fatalf("build envtest binaries with hack/build-envtest.sh: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// Start runs a control plane with the CRDs installed, stopped when the test ends.
func Start(tb testing.TB) *Env {
	tb.Helper()
	e := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(RepoRoot(), "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: Assets(tb),
	}
	cfg, err := e.Start()
	if err != nil {
		tb.Fatalf("start envtest: %v", err)
	}
	tb.Cleanup(func() {
		if err := e.Stop(); err != nil {
			tb.Logf("stop envtest: %v", err)
		}
	})
	s := Scheme()
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		tb.Fatalf("client for envtest: %v", err)
	}
	return &Env{Config: cfg, Client: c, Scheme: s, env: e}
}
