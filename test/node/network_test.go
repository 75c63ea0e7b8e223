package node

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// outside is an address off this machine: TEST-NET-1, where this host's own default route
// points. Nothing from a pod may reach it.
const outside = "192.0.2.1"

// failFast bounds how long a refused attempt may take: a timeout (a packet that left and was
// never answered) is a breach even if it ends in failure.
const failFast = 3 * time.Second

// probeScript runs inside the probe pod and prints one "name result millis detail" line per check.
const probeScript = `
try() { # name cmd...
  local name=$1; shift
  local t0 t1 err rc
  t0=$(date +%s%N)
  err=$(timeout 20 "$@" 2>&1); rc=$?
  t1=$(date +%s%N)
  if [[ $rc == 0 ]]; then r=OK; else r=FAILED; fi
  echo "$name $r $(( (t1 - t0) / 1000000 )) ${err//$'\n'/ }"
}
try outside-tcp bash -c 'exec 3<>/dev/tcp/` + outside + `/80'
try kubernetes-service bash -c 'exec 3<>/dev/tcp/${KUBERNETES_SERVICE_HOST}/${KUBERNETES_SERVICE_PORT}'
try cluster-name getent hosts kubernetes.default.svc.cluster.local
try outside-name getent hosts example.com
routes=$(while read -r iface dst rest; do [[ $dst == 00000000 ]] && echo "$iface"; done < /proc/net/route)
echo "default-route ${routes:-none} 0"
`

// TestNetworkRuleNothingLeavesTheMachine holds the cluster to the network rule: a pod has no
// default route, so its attempt to reach an outside address fails at once; the Service network
// and cluster DNS work; a name outside the cluster has no answer (CoreDNS has no forward); and
// even a pod given a default route is rejected at once by the node's FORWARD guard.
func TestNetworkRuleNothingLeavesTheMachine(t *testing.T) {
	cl := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "node-net", Labels: restrictedLabels()}}
	if err := cl.c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.c.Delete(context.Background(), ns) })
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: ns.Name},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To[int64](999),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "probe", Image: mariadbImage, Command: []string{"sleep", "infinity"},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
		},
	}
	if err := cl.c.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	poll(t, "probe pod Running", 2*time.Minute, func() (bool, error) {
		if err := cl.c.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return false, err
		}
		return pod.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s", pod.Status.Phase)
	})

	out := cl.run(t, "exec", "-n", ns.Name, "probe", "--", "bash", "-c", probeScript)
	t.Logf("probe:\n%s", out)
	res := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 {
			res[f[0]] = f[1:]
		}
	}
	check := func(name, want string, fast bool) {
		t.Helper()
		r, ok := res[name]
		if !ok {
			t.Errorf("%s: no result", name)
			return
		}
		if r[0] != want {
			t.Errorf("%s: %s, want %s (%s)", name, r[0], want, strings.Join(r[2:], " "))
		}
		if ms, _ := strconv.Atoi(r[1]); fast && time.Duration(ms)*time.Millisecond > failFast {
			t.Errorf("%s took %d ms: a refusal must be immediate, not a timeout", name, ms)
		}
	}
	check("outside-tcp", "FAILED", true)
	check("kubernetes-service", "OK", false)
	check("cluster-name", "OK", false)
	check("outside-name", "FAILED", true)
	if r := res["default-route"]; len(r) == 0 || r[0] != "none" {
		t.Errorf("the pod has a default route via %v", r)
	}

	// Defence in depth: give the pod a default route from the host (no capability in the pod
	// could) and try again from its network namespace, so the packet is pod-sourced.
	pid, err := cl.containerPID(ctx, pod.Status.ContainerStatuses[0].ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	netns := fmt.Sprintf("--net=/proc/%d/ns/net", pid)
	before := guardRejects(t)
	if out, err := exec.CommandContext(ctx, "nsenter", netns, "ip", "route", "add", "default", "via", podGateway(cl)).CombinedOutput(); err != nil {
		t.Fatalf("add a default route in the pod: %v: %s", err, out)
	}
	start := time.Now()
	out2, err := exec.CommandContext(ctx, "nsenter", netns, "timeout", "20", "bash", "-c", "exec 3<>/dev/tcp/"+outside+"/80").CombinedOutput()
	took := time.Since(start)
	if err == nil {
		t.Errorf("a pod with a default route reached %s:80", outside)
	}
	if took > failFast {
		t.Errorf("the guarded attempt took %s (%s): the guard must reject, not drop", took, out2)
	}
	if after := guardRejects(t); after <= before {
		t.Errorf("the FORWARD guard rejected %d packets before and %d after: the attempt did not meet it", before, after)
	}
	t.Logf("guarded attempt failed in %s: %s", took.Round(time.Millisecond), strings.TrimSpace(string(out2)))
}

func podGateway(cl *cluster) string {
	// The bridge's address: the first host of the pod CIDR.
	p := strings.Split(strings.Split(cl.env["NODE_POD_CIDR"], "/")[0], ".")
	return fmt.Sprintf("%s.%s.%s.1", p[0], p[1], p[2])
}

var rejectCount = regexp.MustCompile(`^\s*(\d+)\s+\d+\s+REJECT`)

// guardRejects is the packet count of the node's FORWARD guard's REJECT rule.
func guardRejects(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("iptables", "-L", "RPNODE-FORWARD", "-v", "-n", "-x").CombinedOutput()
	if err != nil {
		t.Fatalf("read the FORWARD guard: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if m := rejectCount.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	t.Fatalf("the FORWARD guard has no REJECT rule:\n%s", out)
	return 0
}

// containerPID is the host PID of a CRI container's process, from containerd's task list.
func (cl *cluster) containerPID(ctx context.Context, containerID string) (int, error) {
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := exec.CommandContext(ctx, "ctr", "--address", cl.env["CONTAINERD_ADDRESS"], "-n", "k8s.io", "tasks", "ls").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("ctr tasks ls: %w: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == id {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("container %s not in containerd's tasks:\n%s", id, out)
}
