package gateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redpacketset/redpacket/cellserver/routing"
	"github.com/redpacketset/redpacket/cellserver/signing"
)

// Resolver lists the base URLs (scheme://host:port) of a cell's servers, ready or not.
type Resolver interface {
	Servers(ctx context.Context, table *routing.Table, cell string) ([]string, error)
}

// StaticResolver reads servers from the routing table's endpoints: local mode, where the
// one-command SET writes them into routing.json. Reloading the file updates them.
type StaticResolver struct{}

// Servers returns the endpoints the table lists for cell.
func (StaticResolver) Servers(_ context.Context, table *routing.Table, cell string) ([]string, error) {
	return slices.Clone(table.Endpoints[cell]), nil
}

// DNSResolver finds a cell's servers through the headless Service the operator creates for it,
// "<cell>-server" in Namespace: one A record per ready pod. With Port 0 it reads SRV records
// instead, which carry the port.
type DNSResolver struct {
	Namespace string
	Port      int
	Resolver  *net.Resolver // nil: net.DefaultResolver
	Scheme    string        // "" means http
}

// ServiceName is the headless Service of a cell's servers; the operator names it the same way.
func ServiceName(cell string) string { return cell + "-server" }

// Servers resolves the cell's Service.
func (d DNSResolver) Servers(ctx context.Context, _ *routing.Table, cell string) ([]string, error) {
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	scheme := d.Scheme
	if scheme == "" {
		scheme = "http"
	}
	host := ServiceName(cell)
	if d.Namespace != "" {
		host += "." + d.Namespace + ".svc"
	}
	var out []string
	if d.Port == 0 {
		_, srvs, err := r.LookupSRV(ctx, "", "", host)
		if err != nil {
			return nil, fmt.Errorf("resolve SRV %s: %w", host, err)
		}
		for _, s := range srvs {
			out = append(out, scheme+"://"+net.JoinHostPort(trimDot(s.Target), strconv.Itoa(int(s.Port))))
		}
	} else {
		addrs, err := r.LookupHost(ctx, host)
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", host, err)
		}
		for _, a := range addrs {
			out = append(out, scheme+"://"+net.JoinHostPort(a, strconv.Itoa(d.Port)))
		}
	}
	slices.Sort(out)
	return out, nil
}

func trimDot(s string) string {
	if len(s) > 0 && s[len(s)-1] == '.' {
		return s[:len(s)-1]
	}
	return s
}

// readiness tracks which servers of each cell answered their last /readyz probe. Routing only
// ever picks among ready servers, so rendezvous keeps each packet on one server for as long as
// the ready set is stable, and a server that stops answering loses only its own packets.
type readiness struct {
	resolver Resolver
	client   *http.Client
	signer   *signing.Signer
	timeout  time.Duration
	onProbe  func(cell string, ready, total int)
	logf     func(msg string, args ...any)

	// softFailures is how many probes in a row may time out or fail to connect before a server
	// that was ready leaves rotation (like a kubelet's failureThreshold): on a loaded machine a
	// busy server answers /readyz late, and dropping it at once would turn load into 503s.
	// A server that answers "not ready" leaves at once.
	softFailures int

	mu    sync.RWMutex
	ready map[string][]string // cell -> sorted ready base URLs
	known map[string][]string // cell -> sorted resolved base URLs
	fails map[string]int      // server -> consecutive soft probe failures
}

// probeOutcome is what one probe said about a server.
type probeOutcome int

const (
	probeReady    probeOutcome = iota
	probeNotReady              // the server answered, and not 200: it says it must not serve
	probeNoAnswer              // timeout or transport error: maybe only busy
)

// Ready lists the ready servers of a cell. The slice is shared: do not modify it.
func (r *readiness) Ready(cell string) []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.ready[cell]
}

// probe resolves and probes every server of every cell the table names, concurrently, then
// swaps in the new picture at once. It returns a server that holds a newer table than table,
// if any answered (routing.HeaderRoutingEpoch), and that table's newest epoch.
func (r *readiness) probe(ctx context.Context, table *routing.Table) (newer string, newerEpoch int64) {
	cells := table.AllCells()
	type result struct {
		cell         string
		known, ready []string
		newer        string
		newerEpoch   int64
	}
	results := make(chan result, len(cells))
	var wg sync.WaitGroup
	for _, cell := range cells {
		wg.Add(1)
		go func() {
			defer wg.Done()
			servers, err := r.resolver.Servers(ctx, table, cell)
			if err != nil {
				r.logf("resolve cell servers failed", "cell", cell, "err", err)
				results <- result{cell: cell}
				return
			}
			outcomes := make([]probeOutcome, len(servers))
			epochs := make([]int64, len(servers))
			var swg sync.WaitGroup
			for i, s := range servers {
				swg.Add(1)
				go func() {
					defer swg.Done()
					outcomes[i], epochs[i] = r.probeOne(ctx, s)
				}()
			}
			swg.Wait()
			res := result{cell: cell}
			for i, e := range epochs {
				if e > res.newerEpoch {
					res.newer, res.newerEpoch = servers[i], e
				}
			}
			res.ready = r.judge(cell, servers, outcomes)
			slices.Sort(res.ready)
			slices.Sort(servers)
			res.known = servers
			results <- res
		}()
	}
	wg.Wait()
	close(results)
	if ctx.Err() != nil {
		// Probes cut short by shutdown say nothing about the servers: keep the last picture.
		return "", 0
	}
	ready := make(map[string][]string, len(cells))
	known := make(map[string][]string, len(cells))
	held := table.Latest().Number
	for res := range results {
		if res.newerEpoch > max(held, newerEpoch) {
			newer, newerEpoch = res.newer, res.newerEpoch
		}
		ready[res.cell], known[res.cell] = res.ready, res.known
		if r.onProbe != nil {
			r.onProbe(res.cell, len(res.ready), len(res.known))
		}
	}
	r.mu.Lock()
	for cell, servers := range ready {
		if !slices.Equal(servers, r.ready[cell]) {
			r.logf("cell servers changed", "cell", cell, "ready", servers, "known", known[cell])
		}
	}
	r.ready, r.known = ready, known
	r.mu.Unlock()
	return newer, newerEpoch
}

// markDown takes server out of cell's ready list until the next probe finds it ready again.
// The list is replaced, not edited, because readers hold the old slice without the lock.
func (r *readiness) markDown(cell, server string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.ready[cell]
	if i := slices.Index(cur, server); i >= 0 {
		r.ready[cell] = slices.Delete(slices.Clone(cur), i, i+1)
	}
}

// judge turns one round of probe outcomes into the cell's ready servers: a server that was
// ready stays ready through fewer than softFailures unanswered probes in a row.
func (r *readiness) judge(cell string, servers []string, outcomes []probeOutcome) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fails == nil {
		r.fails = map[string]int{}
	}
	threshold := max(r.softFailures, 1)
	var ready []string
	for i, s := range servers {
		switch outcomes[i] {
		case probeReady:
			r.fails[s] = 0
			ready = append(ready, s)
		case probeNotReady:
			r.fails[s] = threshold
		case probeNoAnswer:
			r.fails[s]++
			if r.fails[s] < threshold && slices.Contains(r.ready[cell], s) {
				ready = append(ready, s)
			}
		}
	}
	return ready
}

// probeOne probes one server, and says which routing epoch it holds (0: not said).
func (r *readiness) probeOne(ctx context.Context, base string) (probeOutcome, int64) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
	if err != nil {
		return probeNotReady, 0
	}
	// Probes are signed like any call, so a cell may put its whole mux behind the verifier.
	if err := r.signer.Sign(req, nil); err != nil {
		return probeNotReady, 0
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return probeNoAnswer, 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096)) // lets the connection be reused
	epoch, _ := strconv.ParseInt(resp.Header.Get(routing.HeaderRoutingEpoch), 10, 64)
	if resp.StatusCode != http.StatusOK {
		return probeNotReady, epoch
	}
	return probeReady, epoch
}

// fetchTable asks server for its routing table when it is newer than after; nil when it is not.
func (r *readiness) fetchTable(ctx context.Context, server string, after int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, max(r.timeout, 5*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+routing.PathRouting+"?after="+strconv.FormatInt(after, 10), nil)
	if err != nil {
		return nil, err
	}
	if err := r.signer.Sign(req, nil); err != nil {
		return nil, err
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return io.ReadAll(io.LimitReader(resp.Body, 2*routing.MaxTableBytes))
	case http.StatusNoContent:
		return nil, nil
	default:
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("%s%s: %d %s", server, routing.PathRouting, resp.StatusCode, strings.TrimSpace(string(body)))
	}
}
