// Command localset runs a complete RedPacket SET on this machine from a RedPacketSet manifest:
// per cell its own MariaDB, memcached and cell servers, plus the gateway, sized by the
// operator's planner (see internal/localset). It prints where every component listens and
// runs until Ctrl-C or SIGTERM, then stops the tiers in order. Starting it again on the same
// data directory keeps the data and the ports.
//
// It must never decide a plan or a routing table of its own: it runs the operator's planner
// and routing decision (controllers/plan), and it only ever binds 127.0.0.1.
//
//	go run ./cmd/localset up [-f manifest.yaml] [-data .localset] [-max-servers-per-cell 2]
//	go run ./cmd/localset status [-data .localset]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redpacketset/redpacket/internal/localset"
)

func main() {
	// `go run` does not forward SIGTERM to the program it runs: ask the kernel to send it when
	// the parent dies, so `kill <go run pid>` still stops the SET in order instead of orphaning
	// it. (Ctrl-C reaches both through the terminal's process group.)
	if os.Getppid() != 1 {
		_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0)
	}
	// `make up | tee up.log` and Ctrl-C: tee dies with localset's output pipe, and the next
	// write would kill localset with SIGPIPE half way through its ordered stop, taking every
	// child down at once. Caught, the write fails with EPIPE and the stop goes on.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	if len(os.Args) < 2 {
		usage(os.Stderr)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "up":
		err = up(os.Args[2:])
	case "status":
		err = status(os.Args[2:])
	case "-h", "-help", "--help", "help":
		usage(os.Stdout)
		return
	default:
		usage(os.Stderr)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "localset:", err)
		os.Exit(1)
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, `usage:
  localset up     [-f manifest.yaml] [-data DIR] [-max-servers-per-cell N]   start a SET, run until Ctrl-C
  localset status [-data DIR]                                                 print the data dir's endpoints`)
}

func up(args []string) error {
	fs := flag.NewFlagSet("localset up", flag.ContinueOnError)
	manifest := fs.String("f", localset.DefaultManifest, "RedPacketSet manifest")
	data := fs.String("data", ".localset", "data directory (datadirs, logs, state, routing table, key)")
	maxServers := fs.Int("max-servers-per-cell", 2, "cap on cell servers per cell (the planner sizes for production)")
	bufferPool := fs.String("buffer-pool", "128M", "innodb_buffer_pool_size of each cell's MariaDB")
	readyTimeout := fs.Duration("ready-timeout", 10*time.Minute, "how long to wait for every component to be ready")
	noInstall := fs.Bool("no-install", false, "do not run hack/install-deps.sh when mariadbd or memcached is missing")
	if err := fs.Parse(args); err != nil {
		return err
	}
	set, err := localset.LoadManifest(*manifest)
	if err != nil {
		return err
	}
	defer foreground()()
	// Everything localset says also goes to a file in the data directory: the terminal, or
	// the tee it was piped into, may be gone by the time the stop reports how it went.
	logFile, err := openLog(*data)
	if err != nil {
		return err
	}
	defer logFile.Close()
	errOut := bestEffort{logFile, os.Stderr}
	log := slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelInfo}))

	// Signals stay caught through the whole shutdown: a second ^C (or a SIGTERM from both `go
	// run` and the parent-death signal) must not kill localset half way, leaving databases
	// stopped under servers that are still draining. A hangup (the terminal closed) stops in
	// order too, rather than killing localset and leaving every child to stop at once.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		sig := <-sigs
		fmt.Fprintf(errOut, "localset: %s: stopping (gateway, then servers draining, then memcached and MariaDB)…\n", sig)
		cancel()
		for sig := range sigs {
			fmt.Fprintf(errOut, "localset: %s: still stopping in order; SIGKILL aborts (children then drain on their own)\n", sig)
		}
	}()
	start := time.Now()
	s, err := localset.Up(ctx, localset.Options{
		Set: set, DataDir: *data, MaxServersPerCell: *maxServers, InstallDeps: !*noInstall,
		ReadyTimeout: *readyTimeout, BufferPool: *bufferPool, Log: log,
	})
	if err != nil {
		fmt.Fprintln(logFile, "localset:", err)
		return err
	}
	printSummary(bestEffort{os.Stdout, logFile}, s, *manifest, time.Since(start))
	<-ctx.Done()
	if err := s.Stop(); err != nil {
		fmt.Fprintln(logFile, "localset: stop:", err)
		return fmt.Errorf("stop: %w", err)
	}
	fmt.Fprintln(errOut, "localset: stopped cleanly; data kept in", s.State().Dir())
	return nil
}

// LogFile is localset's own log in the data directory's logs/, beside its children's.
const LogFile = "localset.log"

func openLog(dataDir string) (*os.File, error) {
	dir := filepath.Join(dataDir, "logs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create log dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, LogFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	fmt.Fprintf(f, "--- localset: up at %s\n", time.Now().UTC().Format(time.RFC3339))
	return f, nil
}

// bestEffort writes to every writer and never fails: a closed terminal or a dead pipe must
// not keep a line from the others, nor turn a log write into an error that ends the stop.
type bestEffort []io.Writer

func (b bestEffort) Write(p []byte) (int, error) {
	for _, w := range b {
		_, _ = w.Write(p)
	}
	return len(p), nil
}

func printSummary(w io.Writer, s *localset.SET, manifest string, took time.Duration) {
	p := s.Plan()
	st := s.State()
	fmt.Fprintf(w, "\nRedPacketSet %q from %s: %d cells over zones %s, %d slots, shards %d×%d — up in %s\n",
		st.Set, manifest, len(p.Cells), strings.Join(s.Zones(), ","), st.SlotCount, st.Layout.Databases, st.Layout.TablesPerDB, took.Round(time.Second))
	fmt.Fprintf(w, "planner: headroom %.3f, each cell's peak %d opens/s, zone-failure tolerant: %v (%s)\n\n",
		p.Headroom, p.CellPeakOpensPerSec, p.ZoneFailureTolerant, p.ToleranceMessage)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	latest := s.Routing().Epochs[len(s.Routing().Epochs)-1]
	if len(s.Routing().Epochs) > 1 {
		fmt.Fprintf(w, "routing: %d epochs; epoch %d takes effect %s (older packets keep their cell)\n",
			len(s.Routing().Epochs), latest.Number, latest.EffectiveTime.Local().Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "CELL\tSLOTS (epoch %d)\tSERVERS PLANNED\tSTARTED\n", latest.Number)
	for _, c := range s.Cells() {
		planned, started := s.Servers(c)
		var slots []string
		for _, r := range latest.Ranges {
			if r.Cell == c {
				slots = append(slots, fmt.Sprintf("%d-%d", r.Start, r.End))
			}
		}
		if len(slots) == 0 {
			slots = []string{"none (draining)"}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\n", c, strings.Join(slots, ","), planned, started)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tCELL\tZONE\tLISTENS\tLOG")
	for _, c := range s.Components() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Name, dash(c.Cell), dash(c.Zone), c.Addr, dash(rel(c.Log)))
	}
	tw.Flush()
	fmt.Fprintf(w, "\ngateway: %s\nstate:   %s   routing: %s\n", s.GatewayURL(), filepath.Join(st.Dir(), localset.StateFile), st.RoutingPath())
	fmt.Fprintf(w, "try:     curl -s -XPOST %s/v1/packets -d '{\"sender\":\"alice\",\"requestId\":\"r-1\",\"totalCents\":1000,\"count\":5,\"kind\":\"random\"}'\n", s.GatewayURL())
	if d := rel(st.Dir()); d == ".localset" {
		fmt.Fprintln(w, "load:    make rpbench   (from a second terminal)")
	} else {
		fmt.Fprintf(w, "load:    make rpbench LOCALSET_DATA=%s   (from a second terminal)\n", d)
	}
	fmt.Fprintf(w, "log:     %s\n", rel(filepath.Join(st.Dir(), "logs", LogFile)))
	fmt.Fprintln(w, "Ctrl-C stops everything cleanly; `localset up` again on the same -data keeps the data.")
}

func status(args []string) error {
	fs := flag.NewFlagSet("localset status", flag.ContinueOnError)
	data := fs.String("data", ".localset", "data directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	st, err := localset.LoadState(*data)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "set %s, %d slots, created %s\n", st.Set, st.SlotCount, st.CreatedAt.Format(time.RFC3339))
	fmt.Fprintln(tw, "CELL\tMARIADB\tMEMCACHED\tSERVERS")
	for _, c := range st.Cells {
		dbs := c.InstanceAddrs()
		if len(dbs) > 1 {
			dbs[c.PrimaryIndex()] += "(primary)"
		}
		fmt.Fprintf(tw, "%s\t%s\t127.0.0.1:%d\t%s\n", c.Name, strings.Join(dbs, " "), c.MemcachedPort, strings.Join(c.ServerURLs(), " "))
	}
	fmt.Fprintf(tw, "gateway\t%s\n", st.GatewayURL())
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// rel shortens paths under the working directory.
func rel(path string) string {
	if path == "" {
		return ""
	}
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	if r, err := filepath.Rel(wd, path); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return path
}
