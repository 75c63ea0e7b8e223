// Command rpbench is the festival load tool: it drives a SET through its gateway with many
// groups wrapping, paying, grabbing and opening red packets at once, a share of taps aimed at
// a few hot packets, and user-history reads; prints live progress; and ends with a report
// (opens/s, p50/p99/p99.9 per verb, 429s, errors by code) and a conservation audit of every
// cell's database and wallet ledger against docs/design.md §4. It exits non-zero on any violation.
//
// It is a client: it must never write a cell's database (the audit only reads), and it reaches
// the SET only through its gateway.
//
//	rpbench [-localset .localset] [-duration 30s] [-opens N] [-concurrency 64] …
//	rpbench locks [-levels 8,32,128,256] [-duration 5s]   (lock-strategy comparison; see locks.go)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/internal/cpustat"
	"github.com/redpacketset/redpacket/internal/loadgen"
	"github.com/redpacketset/redpacket/internal/localset"
)

func main() {
	var err error
	if len(os.Args) > 1 && os.Args[1] == "locks" {
		err = locks(os.Args[2:])
	} else {
		err = festival(os.Args[1:])
	}
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	case errors.Is(err, errFailed):
		os.Exit(1)
	default:
		fmt.Fprintln(os.Stderr, "rpbench:", err)
		os.Exit(1)
	}
}

// errFailed is a run that completed but found violations or too many errors; the report
// already says why.
var errFailed = errors.New("run failed")

type cellFlags []loadgen.CellDB

func (c *cellFlags) String() string { return fmt.Sprint(*c) }
func (c *cellFlags) Set(v string) error {
	name, dsn, ok := strings.Cut(v, "=")
	if !ok || name == "" || dsn == "" {
		return fmt.Errorf("want CELL=DSN, got %q", v)
	}
	*c = append(*c, loadgen.CellDB{Name: name, DSN: dsn})
	return nil
}

func festival(args []string) error {
	o, err := parseFestival(args)
	if err != nil {
		return err
	}
	t, err := o.target()
	if err != nil {
		return err
	}
	cfg := t.cfg
	tty := isTerminal(os.Stderr)
	cfg.Progress = func(p loadgen.Progress) { printProgress(os.Stderr, p, tty) }
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintf(os.Stderr, "rpbench: %s, %d workers, %d groups × %d members, %d hot packets × %d members (%.0f%% of taps), history %.0f%%, limits %d shares / %d cents\n",
		cfg.Gateway, cfg.Concurrency, cfg.Groups, cfg.Members, cfg.HotPackets, cfg.HotMembers, cfg.HotShare*100, cfg.HistoryShare*100, cfg.MaxCount, cfg.MaxTotalCents)
	if o.sweepLevels != "" {
		return o.sweep(ctx, t, cfg)
	}
	procs := componentProcs(t.state)
	cpu0 := procs.Sample()
	res, err := loadgen.Run(ctx, cfg)
	cpu1 := procs.Sample()
	if tty {
		fmt.Fprintln(os.Stderr)
	}
	if err != nil {
		return err
	}
	printReport(os.Stdout, res)
	printComponentCPU(os.Stdout, procs, cpu0, cpu1, res)
	failed := len(res.Misrouted) > 0 || res.Errors > o.maxErrors
	if o.audit {
		clean, err := o.auditAndPrint(t, res)
		if err != nil {
			return err
		}
		failed = failed || !clean
	}
	if failed {
		return errFailed
	}
	return nil
}

// festivalOpts is rpbench's command line.
type festivalOpts struct {
	cfg                                     loadgen.Config
	cells                                   cellFlags
	dataDir, walletDSN, routingFile, shards string
	explicitLocal                           bool // -localset was given
	audit                                   bool
	auditTimeout, auditSince                time.Duration
	maxErrors                               int64
	sweepLevels, chart                      string
}

func parseFestival(args []string) (festivalOpts, error) {
	var o festivalOpts
	fs := flag.NewFlagSet("rpbench", flag.ContinueOnError)
	fs.StringVar(&o.dataDir, "localset", ".localset", "data dir of a local SET (`localset up`): gateway URL, cell DSNs, layout and routing come from its state.json")
	fs.StringVar(&o.cfg.Gateway, "gateway", "", "gateway base URL (default: the local SET's)")
	fs.Var(&o.cells, "cell", "CELL=DSN of a cell's MariaDB for the audit, repeatable (default: the local SET's cells)")
	fs.StringVar(&o.walletDSN, "wallet-dsn", "", "DSN of the wallet ledger when the servers run with -wallet-dsn (default: each cell's own database)")
	fs.StringVar(&o.routingFile, "routing-file", "", "routing.json for the ownership checks (default: the local SET's)")
	fs.StringVar(&o.shards, "shards", "", "shard layout DATABASESxTABLES of the cells (default: the local SET's, else 100x10)")
	fs.DurationVar(&o.cfg.Duration, "duration", 30*time.Second, "how long to run (0: until -opens)")
	fs.Int64Var(&o.cfg.Opens, "opens", 0, "stop after this many paid shares (0: until -duration)")
	fs.IntVar(&o.cfg.Concurrency, "concurrency", 64, "members tapping at once")
	fs.IntVar(&o.cfg.Groups, "groups", 200, "ordinary groups")
	fs.IntVar(&o.cfg.Members, "members", 50, "members per ordinary group")
	fs.IntVar(&o.cfg.HotPackets, "hot-packets", 4, "hot packets live at once")
	fs.IntVar(&o.cfg.HotMembers, "hot-members", 500, "members of each hot packet's group")
	fs.Float64Var(&o.cfg.HotShare, "hot-share", 0.3, "fraction of taps aimed at the hot packets (negative: none)")
	fs.Float64Var(&o.cfg.HistoryShare, "history-share", 0.02, "fraction of iterations that read a user's history (negative: none)")
	fs.IntVar(&o.cfg.MaxCount, "max-count", 0, "the set's most shares per packet (default: the local SET's, else 100)")
	fs.Int64Var(&o.cfg.MaxTotalCents, "max-total-cents", 0, "the set's largest packet (default: the local SET's, else 20000)")
	fs.Uint64Var(&o.cfg.Seed, "seed", 0, "random seed (0: from the clock)")
	fs.IntVar(&o.cfg.KeepShares, "check-shares", 200_000, "paid shares the audit checks against receive records one by one")
	fs.BoolVar(&o.audit, "audit", true, "audit every cell's database and ledger after the run")
	fs.DurationVar(&o.auditTimeout, "audit-drain-timeout", time.Minute, "how long the audit waits for outboxes to drain")
	fs.DurationVar(&o.auditSince, "audit-since", 0, "audit packets created this long before the run too (0: only this run's)")
	fs.Int64Var(&o.maxErrors, "max-errors", 0, "exit non-zero when more unexpected errors than this occur")
	fs.StringVar(&o.sweepLevels, "sweep", "", "run the mix once per concurrency level (e.g. 16,32,64,128), -duration each, and print opens/s and p99 against them")
	fs.StringVar(&o.chart, "chart", "", "with -sweep: write a PNG of opens/s and p99 open against concurrency here")
	if err := fs.Parse(args); err != nil {
		return festivalOpts{}, err
	}
	o.explicitLocal = isSet(fs, "localset")
	return o, nil
}

// festivalTarget is the SET a run drives and audits: from the flags, filled in from the local
// SET's state where they leave something out.
type festivalTarget struct {
	cfg    loadgen.Config
	cells  []loadgen.CellDB
	layout shard.Layout
	table  *routing.Table
	state  *localset.State // nil without a local SET
}

func (o festivalOpts) target() (festivalTarget, error) {
	cfg, cells, routingFile := o.cfg, slices.Clone([]loadgen.CellDB(o.cells)), o.routingFile
	st, stErr := localset.LoadState(o.dataDir)
	if stErr != nil && (o.explicitLocal || cfg.Gateway == "") {
		if errors.Is(stErr, localset.ErrNoState) {
			up := "`make up`"
			if o.dataDir != ".localset" {
				up = "`make up LOCALSET_DATA=" + o.dataDir + "`"
			}
			return festivalTarget{}, fmt.Errorf("%w in %s: start the local SET first with %s in another terminal, then run rpbench again", localset.ErrNoState, o.dataDir, up)
		}
		return festivalTarget{}, stErr
	}
	layout := shard.Default
	var table *routing.Table
	if st != nil {
		if cfg.Gateway == "" {
			cfg.Gateway = st.GatewayURL()
		}
		if len(cells) == 0 {
			for _, c := range st.Cells {
				cells = append(cells, loadgen.CellDB{Name: c.Name, DSN: c.DSN()})
			}
		}
		if routingFile == "" {
			routingFile = st.RoutingPath()
		}
		layout = st.Layout.Shard()
		if cfg.MaxCount == 0 {
			cfg.MaxCount = st.MaxCount
		}
		if cfg.MaxTotalCents == 0 {
			cfg.MaxTotalCents = st.MaxTotalCents
		}
	}
	// Without a SET the load would spin on refused connections for the whole run and then
	// fail the audit; one probe says what is wrong instead.
	if err := checkGateway(strings.TrimRight(cfg.Gateway, "/")); err != nil {
		return festivalTarget{}, err
	}
	if o.shards != "" {
		if _, err := fmt.Sscanf(o.shards, "%dx%d", &layout.Databases, &layout.TablesPerDB); err != nil {
			return festivalTarget{}, fmt.Errorf("-shards %q: want DATABASESxTABLES: %w", o.shards, err)
		}
	}
	if routingFile != "" {
		t, err := routing.Load(routingFile)
		if err != nil {
			return festivalTarget{}, err
		}
		table = t
	}
	cfg.Routing = table
	for i := range cells {
		cells[i].WalletDSN = o.walletDSN
	}
	cfg.Gateway = strings.TrimRight(cfg.Gateway, "/")
	return festivalTarget{cfg: cfg.WithDefaults(), cells: cells, layout: layout, table: table, state: st}, nil
}

// sweep runs the mix once per -sweep level, then audits everything the levels created.
func (o festivalOpts) sweep(ctx context.Context, t festivalTarget, cfg loadgen.Config) error {
	levels, err := parseLevels(o.sweepLevels)
	if err != nil {
		return err
	}
	all, err := sweep(ctx, cfg, levels, o.chart, os.Stdout)
	if err != nil {
		return err
	}
	failed := false
	for _, r := range all {
		if r.Errors > o.maxErrors || len(r.Misrouted) > 0 {
			failed = true
		}
	}
	if o.audit && len(all) > 0 {
		combined := &loadgen.Result{Started: all[0].Started}
		for _, r := range all {
			combined.Created = append(combined.Created, r.Created...)
			combined.Shares = append(combined.Shares, r.Shares...)
		}
		clean, err := o.auditAndPrint(t, combined)
		if err != nil {
			return err
		}
		failed = failed || !clean
	}
	if failed {
		return errFailed
	}
	return nil
}

// auditAndPrint audits res, prints the report and says whether it is clean.
func (o festivalOpts) auditAndPrint(t festivalTarget, res *loadgen.Result) (bool, error) {
	rep, err := o.auditRun(t, res)
	if err != nil {
		return false, err
	}
	printAudit(os.Stdout, rep)
	return rep.OK(), nil
}

// auditRun checks docs/design.md §4 on every cell after the run.
func (o festivalOpts) auditRun(t festivalTarget, res *loadgen.Result) (*loadgen.AuditReport, error) {
	if len(t.cells) == 0 {
		return nil, errors.New("audit: no cell databases (use -localset or -cell NAME=DSN, or -audit=false)")
	}
	fmt.Fprintln(os.Stderr, "rpbench: auditing (waiting for every outbox to drain)…")
	actx, cancel := context.WithTimeout(context.Background(), o.auditTimeout+10*time.Minute)
	defer cancel()
	return loadgen.Audit(actx, loadgen.AuditConfig{
		Cells: t.cells, Layout: t.layout, Routing: t.table, DrainTimeout: o.auditTimeout,
		From: res.Started.Add(-2*time.Second - o.auditSince), To: time.Now().Add(time.Second),
		Created: res.Created, Shares: res.Shares,
		CellSchema:   stOr(t.state, func(s *localset.State) string { return s.CellSchema }),
		WalletSchema: stOr(t.state, func(s *localset.State) string { return s.WalletSchema }),
	})
}

// checkGateway probes the gateway's readiness once.
func checkGateway(base string) error {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(base + "/readyz")
	if err != nil {
		return fmt.Errorf("no gateway answers at %s (%v): start the local SET first with `make up` in another terminal, and run rpbench once it prints the gateway URL", base, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the gateway at %s is not ready (%s): wait until `make up` prints its table, then run rpbench again", base, resp.Status)
	}
	return nil
}

// componentProcs finds the local SET's processes by the ports in its state: each cell's
// mariadbd, its cell servers and the gateway.
func componentProcs(st *localset.State) cpustat.Group {
	g := cpustat.Group{}
	if st == nil {
		return g
	}
	needle := map[string]string{fmt.Sprintf("-listen=127.0.0.1:%d", st.GatewayPort): "gateway"}
	for _, c := range st.Cells {
		needle[fmt.Sprintf("--port=%d", c.MySQLPort)] = "mariadb"
		for _, p := range c.ServerPorts {
			needle[fmt.Sprintf("-listen=127.0.0.1:%d", p)] = "cellserver"
		}
	}
	found := cpustat.FindProcs(slices.Collect(maps.Keys(needle)))
	for n, pids := range found {
		g[needle[n]] = append(g[needle[n]], pids...)
	}
	g["rpbench"] = []int{os.Getpid()}
	return g
}

// printComponentCPU is each component's CPU time per paid open over the load (from /proc).
func printComponentCPU(w io.Writer, g cpustat.Group, before, after map[string]time.Duration, r *loadgen.Result) {
	if len(g) <= 1 || r.Opens == 0 {
		return
	}
	fmt.Fprintf(w, "\nCPU per paid open (from /proc, %d paid opens):", r.Opens)
	var total time.Duration
	for _, name := range []string{"mariadb", "cellserver", "gateway", "rpbench"} {
		pids, ok := g[name]
		if !ok {
			continue
		}
		d := after[name] - before[name]
		total += d
		fmt.Fprintf(w, "  %s %s (%d proc)", name, perOpen(d, r.Opens), len(pids))
	}
	fmt.Fprintf(w, "  all %s\n", perOpen(total, r.Opens))
}

func perOpen(d time.Duration, opens int64) string {
	return fmt.Sprintf("%.0fµs", float64(d.Microseconds())/float64(opens))
}

func stOr(st *localset.State, f func(*localset.State) string) string {
	if st == nil {
		return ""
	}
	return f(st)
}

func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// printProgress draws a bar on a terminal and a plain line every 5 s otherwise (CI logs).
func printProgress(w io.Writer, p loadgen.Progress, tty bool) {
	frac := 0.0
	if p.Duration > 0 {
		frac = p.Elapsed.Seconds() / p.Duration.Seconds()
	}
	if p.Target > 0 {
		frac = max(frac, float64(p.Opens)/float64(p.Target))
	}
	frac = min(frac, 1)
	line := fmt.Sprintf("%5.1fs %9d opens %8.0f opens/s  %8d req  429s %d  errors %d", p.Elapsed.Seconds(), p.Opens, p.OpensPerSec, p.Requests, p.Throttled, p.Errors)
	if tty {
		const width = 30
		n := int(frac * width)
		fmt.Fprintf(w, "\r[%s%s] %3.0f%% %s ", strings.Repeat("#", n), strings.Repeat("-", width-n), frac*100, line)
		return
	}
	if int(p.Elapsed.Round(time.Second).Seconds())%5 == 0 {
		fmt.Fprintf(w, "rpbench: %3.0f%% %s\n", frac*100, line)
	}
}

func printReport(w io.Writer, r *loadgen.Result) {
	fmt.Fprintf(w, "\nrpbench report — %s, GOMAXPROCS %d, %d CPUs\n", r.Started.UTC().Format(time.RFC3339), runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Fprintf(w, "ran %s: %d shares paid, %.0f opens/s; %d packets created; 429s %d; unexpected errors %d\n",
		r.Elapsed.Round(time.Millisecond), r.Opens, r.OpensPerSec, len(r.Created), r.Throttled, r.Errors)
	fmt.Fprintf(w, "CPU: machine %.0f%% busy during the run; rpbench itself used %.1f of %d cores\n\n",
		r.MachineCPU*100, r.ClientCPU.Seconds()/r.Elapsed.Seconds(), runtime.NumCPU())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "verb\trequests\tp50\tp99\tp99.9\tmax\t\toutcomes")
	for _, v := range r.Verbs {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\t%s\n", v.Verb, v.Requests, ms(v.P50), ms(v.P99), ms(v.P999), ms(v.Max), strings.Join(v.SortedOutcomes(), " "))
	}
	tw.Flush()
	if len(r.ErrorSamples) > 0 {
		fmt.Fprintln(w, "\nfirst unexpected answers:")
		for _, s := range r.ErrorSamples {
			fmt.Fprintln(w, "  "+s)
		}
	}
	if len(r.Misrouted) > 0 {
		fmt.Fprintf(w, "\nMISROUTED (%d): answered by a cell that does not own the packet's slot at its creation:\n", len(r.Misrouted))
		for _, s := range r.Misrouted {
			fmt.Fprintln(w, "  "+s)
		}
	}
}

func printAudit(w io.Writer, a *loadgen.AuditReport) {
	packets, receipts := 0, 0
	cells := append([]loadgen.CellAudit(nil), a.Cells...)
	sort.Slice(cells, func(i, j int) bool { return cells[i].Name < cells[j].Name })
	fmt.Fprintln(w, "\naudit (docs/design.md §4) per cell:")
	for _, c := range cells {
		packets += c.Packets
		receipts += c.Receipts
		fmt.Fprintf(w, "  %-24s %7d packets %9d receive records   outbox drained in %s\n", c.Name, c.Packets, c.Receipts, c.DrainedIn.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "client view checked: %d created packets in their owner cell, %d paid shares against receive records\n", a.Checked.Created, a.Checked.Shares)
	if a.OK() {
		fmt.Fprintf(w, "audit CLEAN: %d packets, %d receive records — conservation, no user twice, wallet credits = receive records, escrow = remaining, ledger balanced, every packet in its owner cell\n", packets, receipts)
		return
	}
	fmt.Fprintf(w, "audit FAILED: %d violations\n", len(a.Violations))
	for i, v := range a.Violations {
		if i == 50 {
			fmt.Fprintf(w, "  … and %d more\n", len(a.Violations)-50)
			break
		}
		fmt.Fprintln(w, "  "+v)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000) }
