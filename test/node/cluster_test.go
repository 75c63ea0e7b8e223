package node

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	rpv1 "github.com/redpacketset/redpacket/api/v1alpha1"
)

var keep = flag.Bool("node.keep", false, "leave the cluster running after the tests (tear down with hack/node/down.sh)")

// cluster is the running node as hack/node/up.sh described it in its env file.
type cluster struct {
	env     map[string]string
	cfg     *rest.Config
	c       client.Client
	repo    string
	kubectl string
}

// node is the package's cluster; nil with nodeErr set when it could not be brought up, so every
// test fails with the same reason.
var (
	node    *cluster
	nodeErr error
)

func TestMain(m *testing.M) {
	flag.Parse()
	ctrllog.SetLogger(zap.New(zap.WriteTo(os.Stderr)))
	code := func() int {
		var down func() error
		node, down, nodeErr = bringUp()
		if down != nil && !*keep {
			defer func() {
				if err := down(); err != nil {
					fmt.Fprintf(os.Stderr, "test/node: tear-down: %v\n", err)
					os.Exit(1)
				}
			}()
		}
		return m.Run()
	}()
	os.Exit(code)
}

// need is the first line of every test: the cluster, or a failure naming why there is none.
func need(t *testing.T) *cluster {
	t.Helper()
	if nodeErr != nil {
		t.Fatalf("no single-node cluster: %v", nodeErr)
	}
	return node
}

func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the test's source")
	}
	return filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
}

// script runs one of hack/node's scripts, its stderr streamed to ours (the builds take minutes
// and say what they do), and returns its last stdout line.
func script(ctx context.Context, repo, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(repo, "hack", "node", name), args...)
	cmd.Dir = repo
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("hack/node/%s %s: %w", name, strings.Join(args, " "), err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	return lines[len(lines)-1], nil
}

// bringUp builds (cached) and starts the node, imports the images, and returns the cluster with
// the function that tears it down and checks the host is restored.
func bringUp() (*cluster, func() error, error) {
	if runtime.GOOS != "linux" {
		return nil, nil, fmt.Errorf("a kubelet needs Linux, this is %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		return nil, nil, fmt.Errorf("the kubelet, containerd and iptables need root; run as root")
	}
	repo, err := repoRoot()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	for _, s := range []string{"install-packages.sh", "build.sh", "images.sh"} {
		if _, err := script(ctx, repo, s); err != nil {
			return nil, nil, err
		}
	}
	envFile, err := script(ctx, repo, "up.sh")
	if err != nil {
		return nil, nil, err
	}
	down := func() error {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer dcancel()
		_, err := script(dctx, repo, "down.sh")
		return err
	}
	env, err := readEnv(envFile)
	if err != nil {
		return nil, down, err
	}
	cl := &cluster{env: env, repo: repo, kubectl: filepath.Join(env["NODE_BIN"], "kubectl")}
	if cl.cfg, err = clientcmd.BuildConfigFromFlags("", env["KUBECONFIG"]); err != nil {
		return nil, down, fmt.Errorf("kubeconfig %s: %w", env["KUBECONFIG"], err)
	}
	cl.cfg.QPS, cl.cfg.Burst = 50, 100
	scheme := clientgoscheme.Scheme
	for _, add := range []func(*k8sruntime.Scheme) error{rpv1.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, down, fmt.Errorf("scheme: %w", err)
		}
	}
	if cl.c, err = client.New(cl.cfg, client.Options{Scheme: scheme}); err != nil {
		return nil, down, fmt.Errorf("client: %w", err)
	}
	for _, img := range []string{"operator", "cellserver", "gateway", "mariadb", "memcached"} {
		if err := cl.importImage(ctx, filepath.Join(env["NODE_IMAGES"], img+".tar")); err != nil {
			return nil, down, err
		}
	}
	return cl, down, nil
}

func readEnv(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read the node's env file: %w", err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if ok {
			env[k] = v
		}
	}
	for _, k := range []string{"KUBECONFIG", "CONTAINERD_ADDRESS", "NODE_BIN", "NODE_IMAGES", "NODE_IP", "NODE_POD_CIDR", "NODE_SERVICE_CIDR", "NODE_ZONE"} {
		if env[k] == "" {
			return nil, fmt.Errorf("%s: no %s", path, k)
		}
	}
	return env, sc.Err()
}

// importImage puts an image tarball into the kubelet's containerd namespace, pinned so the
// kubelet's image GC never removes what cannot be pulled again.
func (cl *cluster) importImage(ctx context.Context, tarball string) error {
	out, err := exec.CommandContext(ctx, "ctr", "--address", cl.env["CONTAINERD_ADDRESS"], "-n", "k8s.io",
		"images", "import", "--no-unpack=false", tarball).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s: %w: %s", tarball, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		// "unpacking ghcr.io/redpacketset/gateway:v0.1.0 (sha256:...)...done"
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "unpacking" {
			if out, err := exec.CommandContext(ctx, "ctr", "--address", cl.env["CONTAINERD_ADDRESS"], "-n", "k8s.io",
				"images", "label", f[1], "io.cri-containerd.pinned=pinned").CombinedOutput(); err != nil {
				return fmt.Errorf("pin %s: %w: %s", f[1], err, out)
			}
		}
	}
	return nil
}

// run is kubectl against the node; its combined output, or a failure naming the command.
func (cl *cluster) run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := cl.tryRun(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (cl *cluster) tryRun(args ...string) (string, error) {
	cmd := exec.Command(cl.kubectl, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+cl.env["KUBECONFIG"])
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// dump logs what an SRE would look at when a wait fails: pods, events, the operator's log.
func (cl *cluster) dump(t *testing.T, ns string) {
	t.Helper()
	for _, args := range [][]string{
		{"get", "nodes", "-o", "wide"},
		{"get", "rps,rpc,pods,pvc,svc", "-n", ns, "-o", "wide"},
		{"get", "events", "-n", ns, "--sort-by=.lastTimestamp"},
		{"logs", "-n", operatorNamespace, "-l", "app.kubernetes.io/name=redpacket-operator", "--tail=60"},
		{"logs", "-n", ns, "-l", "app.kubernetes.io/component=gateway", "--tail=80", "--prefix"},
		{"logs", "-n", ns, "-l", "app.kubernetes.io/component=cellserver", "-c", "cellserver", "--tail=40", "--prefix", "--max-log-requests=10"},
	} {
		out, _ := cl.tryRun(args...)
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
}

// poll calls check until it returns true, fails with its last error at the deadline.
func poll(t *testing.T, what string, timeout time.Duration, check func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := check()
		if ok {
			return
		}
		last = err
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (last: %v)", what, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
