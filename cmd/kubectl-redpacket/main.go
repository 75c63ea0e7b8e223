// Command kubectl-redpacket is the `kubectl redpacket` plugin: a set's state at a glance,
// manual masks, draining a cell of new packets, and the conservation audit over every cell's
// database (docs/operator.md, kubectl plugin). Put it on PATH and run `kubectl redpacket`.
//
//	kubectl redpacket status SET [-o json|yaml]
//	kubectl redpacket mask CELL TABLE --reason TEXT
//	kubectl redpacket unmask CELL TABLE
//	kubectl redpacket drain CELL --reason TEXT | --undo
//	kubectl redpacket audit SET [--drain-timeout 60s]
//	kubectl redpacket switchover CELL --to POD [--timeout 2m]
//
// Commands that read a cell's database use the credentials in the cell's Secret; outside the
// cluster, give each cell's address with --db-addr CELL=HOST:PORT (e.g. a kubectl
// port-forward to pod CELL-mysql-0).
//
// It must never write packet, outbox or ledger rows: its only writes are manual masks and
// drain marks in a cell's control schema, and the audit reads.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/redpacketset/redpacket/internal/plugin"
)

const usage = `usage: kubectl redpacket [flags] COMMAND ARGS

commands:
  status SET                     cells, servers, slots, epochs and who holds them, masks, table errors
  mask CELL TABLE --reason TEXT  stop new packets in the cell's slots of a logical table (db_07.t_3)
  unmask CELL TABLE              lift the manual masks on that table
  drain CELL --reason TEXT       stop new packets in every slot of the cell (--undo lifts)
  audit SET                      conservation audit over every cell's database (exit 1 on a violation)
  switchover CELL --to POD       hand a replicated cell's primary role to POD (name or ordinal), for maintenance

flags (before or after the command):
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil))
}

// run is the command line; cfg, when not nil, replaces the kubeconfig (tests).
func run(ctx context.Context, args []string, stdout, stderr io.Writer, cfg *rest.Config) int {
	fs := flag.NewFlagSet("kubectl-redpacket", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	var (
		namespace  = fs.String("n", "", "namespace (default: the kubeconfig context's)")
		kubeconfig = fs.String("kubeconfig", "", "kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
		output     = fs.String("o", "", "output: table, json or yaml")
		reason     = fs.String("reason", "", "why (mask, drain): shown in status and to the next person on call")
		undo       = fs.Bool("undo", false, "drain: lift the drain masks")
		drainWait  = fs.Duration("drain-timeout", time.Minute, "audit: how long to wait for each cell's outbox to be relayed")
		to         = fs.String("to", "", "switchover: the database pod (name or ordinal) to become primary")
		timeout    = fs.Duration("timeout", 2*time.Minute, "switchover: how long to wait for the operator's answer")
		dbAddr     = map[string]string{}
	)
	fs.Func("db-addr", "CELL=HOST:PORT of a cell's database, repeatable (default: the cell's primary pod DNS name)", func(v string) error {
		cell, addr, ok := strings.Cut(v, "=")
		if !ok || cell == "" || addr == "" {
			return fmt.Errorf("want CELL=HOST:PORT, got %q", v)
		}
		dbAddr[cell] = addr
		return nil
	})
	// Flags may follow the command and its arguments, as with kubectl.
	var pos []string
	for rest := args; ; {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return 0
			}
			return 2
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	want := map[string]int{"status": 1, "mask": 2, "unmask": 2, "drain": 1, "audit": 1, "switchover": 1}
	if len(pos) == 0 || want[pos[0]] == 0 || len(pos)-1 != want[pos[0]] {
		fs.Usage()
		return 2
	}
	// Before anything changes: a bad -o must not leave a mask written and unreported.
	if err := plugin.CheckFormat(*output); err != nil {
		fmt.Fprintf(stderr, "kubectl redpacket: %v\n", err)
		return 2
	}
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		&clientcmd.ClientConfigLoadingRules{ExplicitPath: *kubeconfig, Precedence: clientcmd.NewDefaultClientConfigLoadingRules().Precedence},
		&clientcmd.ConfigOverrides{})
	if cfg == nil {
		c, err := loader.ClientConfig()
		if err != nil {
			fmt.Fprintf(stderr, "kubeconfig: %v\n", err)
			return 1
		}
		cfg = c
	}
	if *namespace == "" {
		ns, _, err := loader.Namespace()
		if err != nil || ns == "" {
			ns = "default"
		}
		*namespace = ns
	}
	scheme, err := plugin.Scheme()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintf(stderr, "kubernetes client: %v\n", err)
		return 1
	}
	p := &plugin.Plugin{K8s: k8s, Namespace: *namespace, DBAddr: dbAddr}
	var out any
	switch pos[0] {
	case "status":
		out, err = p.Status(ctx, pos[1])
	case "mask":
		out, err = p.Mask(ctx, pos[1], pos[2], *reason)
	case "unmask":
		out, err = p.Unmask(ctx, pos[1], pos[2])
	case "drain":
		out, err = p.Drain(ctx, pos[1], *reason, *undo)
	case "audit":
		out, err = p.Audit(ctx, pos[1], *drainWait)
	case "switchover":
		out, err = p.Switchover(ctx, pos[1], *to, *timeout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "kubectl redpacket %s: %v\n", pos[0], err)
		if errors.Is(err, plugin.ErrBadInput) {
			return 2
		}
		return 1
	}
	if err := plugin.Print(stdout, *output, out, time.Now()); err != nil {
		fmt.Fprintf(stderr, "kubectl redpacket: %v\n", err)
		return 2
	}
	if a, ok := out.(*plugin.AuditResult); ok && !a.OK {
		return 1
	}
	return 0
}
