// Package setwide tests the money invariants that span cells (docs/design.md, "Guarantees
// across cells"): a SET of several cells of real cellserver processes on MariaDB, driven
// through an in-process gateway, audited from every cell's database.
package setwide

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redpacketset/redpacket/cellserver/gateway"
	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/shard"
	"github.com/redpacketset/redpacket/cellserver/signing"
	"github.com/redpacketset/redpacket/cellserver/store"
	"github.com/redpacketset/redpacket/internal/loadgen"
	"github.com/redpacketset/redpacket/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// cellserverBin builds cmd/cellserver once per test binary.
func cellserverBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "setwide-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "cellserver")
		out, err := exec.Command(testenv.GoTool(), "build", "-o", binPath, "github.com/redpacketset/redpacket/cmd/cellserver").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build cellserver: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// skewClock is the gateway's clock: real time plus an offset the tests step.
type skewClock struct{ offset atomic.Int64 }

func (c *skewClock) Now() time.Time        { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *skewClock) Step(d time.Duration)  { c.offset.Add(int64(d)) }
func (c *skewClock) Offset() time.Duration { return time.Duration(c.offset.Load()) }
func (c *skewClock) Set(d time.Duration)   { c.offset.Store(int64(d)) }

// server is one cellserver process.
type server struct {
	cell, name, url string
	args            []string
	logFile         string
	cmd             *exec.Cmd
	done            chan struct{}
}

type cell struct {
	name, prefix string
	servers      []*server
}

// harness is a SET on one MariaDB: each cell its own schemas (nothing shared), its servers
// reading one routing file, and a gateway in front.
type harness struct {
	t           testing.TB // the running test (a seed's subtest in the random test)
	root        testing.TB // owns the processes
	dir         string
	db          *testenv.MariaDB
	layout      shard.Layout
	routingFile string
	mu          sync.Mutex
	table       *routing.Table
	cells       []*cell
	clock       *skewClock
	gw          *gateway.Gateway
	watcher     *routing.Watcher
	front       *httptest.Server
	expiry      time.Duration
	stores      map[string]*store.Store
}

// newHarness starts cells × serversPerCell servers. The first epoch splits the slots evenly.
func newHarness(t testing.TB, cells, serversPerCell int, expiry time.Duration) *harness {
	t.Helper()
	servers := make([]int, cells)
	for i := range servers {
		servers[i] = serversPerCell
	}
	return newHarnessOf(t, servers, expiry)
}

// newHarnessOf starts len(servers) cells, cell i with servers[i] servers.
func newHarnessOf(t testing.TB, servers []int, expiry time.Duration) *harness {
	t.Helper()
	cells := len(servers)
	bin := cellserverBin(t)
	h := &harness{t: t, root: t, dir: t.TempDir(), db: testenv.SharedMariaDB(t), clock: &skewClock{}, expiry: expiry,
		layout: shard.Layout{Databases: 2, TablesPerDB: 2}}
	keyFile := filepath.Join(h.dir, "signing.key")
	key := []byte("setwide-signing-key-0123456789abcdef")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	h.table = &routing.Table{Set: "sw", SlotCount: 1000, Endpoints: map[string][]string{}}
	e := routing.Epoch{Number: 1, EffectiveTime: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	per := 1000 / cells
	for i := range cells {
		c := &cell{name: fmt.Sprintf("sw-cell-%d", i), prefix: testenv.UniqueName(fmt.Sprintf("sw%d", i))}
		end := (i+1)*per - 1
		if i == cells-1 {
			end = 999
		}
		e.Ranges = append(e.Ranges, routing.SlotRange{Start: i * per, End: end, Cell: c.name})
		for j := range servers[i] {
			s := &server{cell: c.name, name: fmt.Sprintf("%s-server-%d", c.name, j)}
			port := freePort(t)
			s.url = fmt.Sprintf("http://127.0.0.1:%d", port)
			s.logFile = filepath.Join(h.dir, s.name+".log")
			s.args = []string{"-listen", fmt.Sprintf("127.0.0.1:%d", port), "-mysql-dsn", h.db.DSN(""), "-memcached", "",
				"-routing-file", "", "-cell", c.name, "-server-name", s.name,
				"-shard-databases", "2", "-shard-tables", "2", "-shard-db-prefix", c.prefix + "_db_",
				"-cell-schema", c.prefix + "_cell", "-control-schema", c.prefix + "_ctl", "-wallet-schema", c.prefix + "_wallet",
				"-signing-key-file", keyFile, "-drain-timeout", "5s", "-mysql-max-conns", "8", "-queue-workers", "4",
				"-expiry", expiry.String(), "-sweep-every", "200ms", "-routing-poll", "100ms"}
			c.servers = append(c.servers, s)
			h.table.Endpoints[c.name] = append(h.table.Endpoints[c.name], s.url)
		}
		h.cells = append(h.cells, c)
	}
	h.table.Epochs = []routing.Epoch{e}
	h.routingFile = filepath.Join(h.dir, "routing.json")
	h.writeTable()
	for _, c := range h.cells {
		for _, s := range c.servers {
			for i, a := range s.args {
				if a == "-routing-file" {
					s.args[i+1] = h.routingFile
				}
			}
			h.start(s, bin)
		}
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := routing.NewWatcher(h.routingFile, 50*time.Millisecond, quiet)
	if err != nil {
		t.Fatal(err)
	}
	h.watcher = w
	h.gw, err = gateway.New(gateway.Config{Routing: w, Signer: signing.NewSigner(key), Log: quiet,
		ProbeInterval: 50 * time.Millisecond, ProbeFailures: 1, Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go w.Run(ctx)
	go h.gw.Run(ctx)
	h.front = httptest.NewServer(h.gw.Handler())
	t.Cleanup(h.front.Close)
	for _, c := range h.cells {
		h.waitReady(c.name, len(c.servers))
	}
	return h
}

func (h *harness) start(s *server, bin string) {
	h.t.Helper()
	log, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	s.cmd = exec.Command(bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); log.Close(); close(done) }(s.cmd, s.done)
	h.root.Cleanup(func() { h.stop(s, os.Interrupt) })
}

// stop signals a server and waits for it (SIGKILL after 30 s).
func (h *harness) stop(s *server, sig os.Signal) {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	if h.t.Failed() {
		out, _ := os.ReadFile(s.logFile)
		if len(out) > 3000 {
			out = out[len(out)-3000:]
		}
		h.t.Logf("%s:\n%s", filepath.Base(s.logFile), out)
	}
}

// kill9 kills a server without letting it drain; restart starts it again.
func (h *harness) kill9(s *server) { h.stop(s, os.Kill) }
func (h *harness) restart(s *server) {
	h.start(s, cellserverBin(h.t))
	h.waitServerReady(s)
}

func (h *harness) waitServerReady(s *server) {
	h.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := http.Get(s.url + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("server %s never ready", s.name)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
	// The gateway probes every 50ms; wait until it uses the server again.
	testenv.Eventually(h.t, time.Minute, "gateway sees "+s.name, testenv.Holds(func() bool {
		for _, u := range h.gw.ReadyServers(s.cell) {
			if u == s.url {
				return true
			}
		}
		return false
	}))
}

func (h *harness) waitReady(cell string, n int) {
	h.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for len(h.gw.ReadyServers(cell)) < n {
		if time.Now().After(deadline) {
			h.t.Fatalf("cell %s: %d of %d servers ready", cell, len(h.gw.ReadyServers(cell)), n)
		}
		time.Sleep(50 * time.Millisecond) // polling with a deadline
	}
}

// writeTable publishes h.table atomically (write + rename), as the kubelet updates a ConfigMap.
func (h *harness) writeTable() {
	h.t.Helper()
	data, err := h.table.Marshal()
	if err != nil {
		h.t.Fatal(err)
	}
	tmp := h.routingFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.Rename(tmp, h.routingFile); err != nil {
		h.t.Fatal(err)
	}
}

// publish changes the table and waits until the gateway and every running server hold it.
func (h *harness) publish(change func(t *routing.Table)) {
	h.t.Helper()
	h.mu.Lock()
	next := *h.table
	next.Epochs = append([]routing.Epoch(nil), h.table.Epochs...)
	next.Masked = append([]routing.MaskedRange(nil), h.table.Masked...)
	change(&next)
	h.table = &next
	offsets := map[*server]int64{}
	for _, c := range h.cells {
		for _, s := range c.servers {
			if fi, err := os.Stat(s.logFile); err == nil {
				offsets[s] = fi.Size()
			}
		}
	}
	h.writeTable()
	h.mu.Unlock()
	// Each running server logs the reload of the file it polls every second.
	for s, off := range offsets {
		select {
		case <-s.done:
			continue
		default:
		}
		testenv.Eventually(h.t, time.Minute, s.name+" reloads the routing table", testenv.Holds(func() bool {
			data, err := os.ReadFile(s.logFile)
			return err == nil && int64(len(data)) > off && strings.Contains(string(data[off:]), "routing table reloaded")
		}))
	}
	want, _ := h.table.Marshal()
	testenv.Eventually(h.t, time.Minute, "gateway loads the new routing table", testenv.Holds(func() bool {
		got, _ := h.watcher.Current().Marshal()
		return string(got) == string(want)
	}))
}

// addEpoch stacks an epoch effective at `at` (whole second) that gives slots lo..hi to cell.
func (h *harness) addEpoch(at time.Time, lo, hi int, to string) routing.Epoch {
	var added routing.Epoch
	h.publish(func(t *routing.Table) {
		last := t.Latest()
		e := routing.Epoch{Number: last.Number + 1, EffectiveTime: at.Truncate(time.Second)}
		for s := 0; s < t.SlotCount; s++ {
			owner := last.Owner(s)
			if s >= lo && s <= hi {
				owner = to
			}
			if n := len(e.Ranges); n > 0 && e.Ranges[n-1].Cell == owner && e.Ranges[n-1].End == s-1 {
				e.Ranges[n-1].End = s
			} else {
				e.Ranges = append(e.Ranges, routing.SlotRange{Start: s, End: s, Cell: owner})
			}
		}
		t.Epochs = append(t.Epochs, e)
		added = e
	})
	return added
}

func (h *harness) current() *routing.Table {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.table
}

// answer is the gateway's reply.
type answer struct {
	status int
	cell   string
	body   map[string]any
	raw    string
}

func (a answer) str(k string) string { s, _ := a.body[k].(string); return s }

func (h *harness) do(method, path, body string) answer {
	h.t.Helper()
	req, _ := http.NewRequest(method, h.front.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, cell: resp.Header.Get(routing.HeaderCell), raw: string(raw)}
	_ = json.Unmarshal(raw, &a.body)
	return a
}

func wrapBody(sender, requestID string, total int64, count int) string {
	return fmt.Sprintf(`{"sender":%q,"requestId":%q,"totalCents":%d,"count":%d,"kind":"random","group":"g"}`, sender, requestID, total, count)
}

// keyHomedAt finds a request ID (prefix + n) whose wrap key is homed at cell under h's table at now.
func (h *harness) keyHomedAt(sender, prefix, cell string, now time.Time, also func(slot int) bool) string {
	t := h.current()
	for n := 0; ; n++ {
		id := fmt.Sprintf("%s%d", prefix, n)
		k := routing.WrapKey(sender, id)
		if home, err := t.KeyHome(k, now); err == nil && home == cell && (also == nil || also(t.KeySlot(k))) {
			return id
		}
	}
}

// auditConfig audits every cell of the set over packets created since from.
func (h *harness) auditConfig(from time.Time) loadgen.AuditConfig {
	cfg := loadgen.AuditConfig{Layout: h.layout, Routing: h.current(), From: from, To: time.Now().Add(time.Hour), DrainTimeout: 30 * time.Second}
	for _, c := range h.cells {
		cfg.Cells = append(cfg.Cells, loadgen.CellDB{Name: c.name, DSN: h.db.DSN(""),
			CellSchema: c.prefix + "_cell", WalletSchema: c.prefix + "_wallet", ShardDBPrefix: c.prefix + "_db_"})
	}
	return cfg
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
